"""Imported by the CCD pool's fork server only, first in its preload list: ties the fork server
to the process it serves (:func:`skygrade.streamer.ccd_pool.guard_fork_server`), so that a ``kill
-9`` of that process ends the fork server and, through their own parent-death signal, its workers.

``multiprocessing`` runs no other code of ours in the fork server before it serves, hence a
module that acts when imported; any other process must not import it.
"""

from skygrade.streamer.ccd_pool import guard_fork_server

guard_fork_server()
