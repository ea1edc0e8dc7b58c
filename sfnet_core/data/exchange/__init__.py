"""Labels to and from the labelling tools teams use: CVAT and Label Studio.

``layout`` reads a dataset folder (what ``sfnet-extract`` writes: ``images/[split/]``,
``labels/[split/]``, ``classes.yaml``); ``cvat`` writes and reads CVAT's "Segmentation mask 1.1"
(``labelmap.txt`` and palette PNGs); ``label_studio`` Label Studio's brush labels (tasks JSON with
run-length-encoded masks). Every importer validates every value and size against the dataset's
class table and images before anything is written (``sfnet_core.cli.labels_command``).
"""
