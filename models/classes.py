"""The five image-quality classes of the method (Teimoorinia et al. 2020), in model output order,
and what each one means (:data:`CLASSES` is defined once, in :mod:`skygrade.ops.classes`)."""

from skygrade.ops.classes import CLASSES

__all__ = ["CLASSES", "DESCRIPTIONS"]

DESCRIPTIONS: dict[str, str] = {
    "GOOD": "usable science exposure: round, compact stars, normal sky",
    "B_SEEING": "bad seeing: round but fat PSF",
    "BGP": "background problem: bright or strongly varying sky (moon, scattered light, clouds)",
    "BT": "bad tracking: stars trailed along one direction",
    "RBT": "severe / random bad tracking: long, erratic trails",
}
