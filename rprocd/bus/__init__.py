"""The D-Bus adapter (Gio): org.rprocd1 over the core's Manager.

`service.BusService` is the entry point; the other modules each do one job
(names and XML, value conversion, replies, authorization, handlers).
"""

from rprocd.bus.service import BusService

__all__ = ["BusService"]
