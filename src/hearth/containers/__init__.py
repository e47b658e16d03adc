"""Container images without a hub: the engine, a Debian base from packages, Hearth's images.

`engine` finds (or starts) a Docker engine, `base` builds ``hearth/base`` from Debian's
packages with debootstrap, `recipes` writes the images' Dockerfiles and locked requirements
(pure functions), `build` assembles the build contexts and runs ``docker build``. Every
image is built only from local images: nothing is pulled.
"""
