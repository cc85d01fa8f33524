"""The five image-quality classes of the method (Teimoorinia et al. 2020), in model output order.

Defined once, here in the lowest room, because every room names them: the config validates a
class mix with them (ops), the network orders its outputs by them (models), the page colours
them (streamer). :mod:`skygrade.models.classes` adds what each one means.
"""

CLASSES: tuple[str, ...] = ("GOOD", "B_SEEING", "BGP", "BT", "RBT")
