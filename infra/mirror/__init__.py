"""The local dataset mirror: a generated corpus in each upstream format, served over HTTP.

    python -m infra.mirror generate --dir DIR [--seed N] [--scale K]
    python -m infra.mirror serve --dir DIR [--port P]   (generates first if DIR has no corpus)
"""
