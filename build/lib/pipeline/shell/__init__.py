"""The shell: the `stockflow` command line, its commands and the local dev stack."""
