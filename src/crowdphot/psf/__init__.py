"""PSF models: analytic, image (ePSF) and gridded, plus readers for STPSF/STDPSF files."""
