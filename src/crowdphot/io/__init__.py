"""Files: FITS images (JWST SCI/ERR/DQ), catalogs, atomic writes."""
