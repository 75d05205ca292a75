"""Memory mechanisms. One file per mechanism; the file name is the registry key."""
