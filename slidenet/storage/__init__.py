"""Files: written atomically, read within a budget.

    writing     the one way files are written (temporary file, fsync, rename)
    limits      the input budget and every cap on what a file or request may claim
    modelfile   safe `.npz` model files: checksum, `allow_pickle=False`
    modelmeta   a model file's meta, checked as untrusted input before anything is built
    rngstate    a generator's exact state as a uint8 array, for exact resume
"""
