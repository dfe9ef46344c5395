"""A real Asterisk 22 in a Debian sid chroot, for the integration tests and `callscreen demo`.

Needs root, util-linux and (for the first build, ~20 s) mmdebstrap. Not used on the call path.
"""
