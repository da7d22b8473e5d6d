"""Pure builders of what a host receives (shell commands, files, haproxy messages, build scripts)
and parsers of what it answers. Nothing here connects; equality tests pin every string.
"""
