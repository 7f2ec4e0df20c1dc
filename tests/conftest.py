import logging

logging.getLogger("hypergate").setLevel(logging.DEBUG)
