"""Developer tools that build the files under monitoring/ (not part of the installed package)."""
