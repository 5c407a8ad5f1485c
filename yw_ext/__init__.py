"""yw_ext: YOLO-World on the Ultralytics engine (AGPL-3.0)."""

__version__ = "0.1.0"
