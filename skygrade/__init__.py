"""skygrade: image-quality grading of CFHT MegaCam exposures (Teimoorinia et al. 2020, AJ 159, 170).

One package over the four folders of the repository, linked here: ``skygrade.streamer``
(daemon, commands, simulator), ``skygrade.transforms`` (the Beam stages), ``skygrade.models``
(SOM, CNN, bundles; no Beam) and ``skygrade.ops`` (configuration, metrics, alerts).
"""
