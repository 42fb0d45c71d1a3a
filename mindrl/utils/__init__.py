"""Small helpers with no dependencies on the rest of mindrl: launching, atomic files, logging."""
