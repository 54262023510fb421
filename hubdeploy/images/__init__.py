"""The site's images: plan them (pure), build what is missing, test, push and save them.

- :mod:`~hubdeploy.images.plan`: every image's build context and content-hashed tag;
- :mod:`~hubdeploy.images.kernels`: kernels as data (files, recipe steps, labels);
- :mod:`~hubdeploy.images.source`: what of hubdeploy the hub image installs;
- :mod:`~hubdeploy.images.build`: build what is missing on the engine, parents first;
- :mod:`~hubdeploy.images.rootfs`: the Debian base image, from debootstrap;
- :mod:`~hubdeploy.images.buildsteps`: what one build did, step by step;
- :mod:`~hubdeploy.images.imagetest`: ``images test``, every kernel of an image started
  (:mod:`~hubdeploy.images.kernelcheck` runs inside it);
- :mod:`~hubdeploy.images.publish`: push to a registry, or save tarballs.
"""
