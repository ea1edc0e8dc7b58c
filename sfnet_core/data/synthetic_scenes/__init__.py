"""Procedural driving scenes with pixel-exact Cityscapes train-id labels.

No dataset can be downloaded where this project is built and tested, so training, evaluation,
bag replay and the demo run on scenes drawn here. A scene is a small 3-D world (a straight road
with lanes, sidewalks, facades or fields with trees, poles with signs, cars and pedestrians)
seen by a pinhole camera at driver height.

``render``          ``render_scene(seed, h, w)``: one frame, the seed chooses layout, camera,
                    palette, lighting; ``render_sequence(seed, n, h, w)``: a drive through the
                    same world (frame 0 == ``render_scene``); ``frame_seed``
``dataset_writer``  ``write_folder_dataset(root, n, h, w)``: the folder-dataset layout of
                    ``sfnet_core.data``, with the stamp a cache is checked against
``world``           one seed's road, palette and lighting; objects generated chunk by chunk
``props``           buildings, trees, poles with signs, pedestrians, cars as world polygons
``camera``          the ego camera's path and projection, near-plane clipping
``train_ids``       the classes drawn, as Cityscapes train ids
``arguments``       the size limit and ``parse_size``, free of heavy imports (for fast ``--help``)

The common names are also reachable lazily as ``sfnet_core.data.render_scene``,
``render_sequence`` and ``write_folder_dataset``. This ``__init__`` imports nothing, so a
command that only needs ``arguments`` does not load OpenCV.
"""
