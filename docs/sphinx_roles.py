"""A griffe extension for the API reference (mkdocs.yml): pyrovae's docstrings are written for Sphinx, as
Pyro's are, and mkdocstrings renders them as Markdown. This rewrites what Markdown has no reading for:

- a role, ``:class:`~pyrovae.models.vae.VAE``` or ``:func:`pyrovae.fit```, becomes inline code
  (``VAE``, with ``~`` the last name alone; ``pyrovae.fit``);
- a line ending in ``::`` (reST's "a literal block follows") ends in ``:``; the indented block after it
  is already a code block in Markdown.

The docstrings themselves stay as they are, for ``help()`` and for Sphinx.
"""

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def markdown(text: str) -> str:
    """The docstring ``text`` with roles as inline code and reST's ``::`` as ``:``."""
    text = ROLE.sub(lambda m: "``" + (m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)) + "``", text)
    return re.sub(r"(?<=\S)::$", ":", text, flags=re.M)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
