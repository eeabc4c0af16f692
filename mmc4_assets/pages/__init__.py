"""Page archives: recover each C4 page's images from WARC (HTML) and WAT (metadata) records."""
