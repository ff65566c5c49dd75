"""Content filters for tests (SVD_CONTENT_FILTER=tests.filters:...)."""


def flag_everything(frames, image):
    return "flag"


def flag_nothing(frames, image):
    return False
