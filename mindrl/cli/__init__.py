"""Command-line entry points. May import any mindrl subsystem; nothing imports cli."""
