"""Golden outputs of the acp command line (see record.py) and the code that extracts them."""
