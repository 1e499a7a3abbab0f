"""mecha: a tiny client for the mecha node daemon (``mechad``), standard library only.

``mecha.Client`` is the blocking client, ``mecha.aio.Client`` the asyncio one. Both
speak ABI v1 as ``abi/SPEC.md`` defines it; payload types live in ``mecha.payloads``,
the encoding in ``mecha.codec``.
"""

from .client import BindingSubscription, Client, ConfigWatch, Registration, Subscription
from .errors import (DeadlineExceeded, EtagMismatch, Internal, InvalidArgument,
                     MechaConnectionError, MechaError, NotFound, PermissionDenied, ProtocolError,
                     ResourceExhausted, StatusError, Unavailable, UnknownOpcode, Unsupported, UnsupportedVersion)
from .payloads import (AppEntry, BindingEvent, BindingSubscribeReply, BulkGetItem, InvokeReply, ConfigItem, ConfigSetItem, ConfigUpdate, DeleteItem, Delivery,
                       ExtendLockReply, HelloReply, ModuleStatus, PublishReply, ReloadReply,
                       SetItem, StateEntry, StatusReply, SubscribeReply, TryLockReply,
                       UnlockStatus, InvokeBindingReply)
from .protocol import Call, default_socket_path

__version__ = "0.1.0"
__all__ = [
    "Client", "Subscription", "BindingSubscription", "ConfigWatch", "Registration", "Call", "default_socket_path",
    "AppEntry", "InvokeReply",
    "MechaError", "MechaConnectionError", "ProtocolError", "StatusError", "NotFound",
    "EtagMismatch", "InvalidArgument", "UnknownOpcode", "Unsupported", "UnsupportedVersion",
    "PermissionDenied", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Internal",
    "BulkGetItem", "DeleteItem", "ExtendLockReply", "HelloReply", "ModuleStatus",
    "ReloadReply", "SetItem", "StateEntry", "StatusReply", "TryLockReply", "UnlockStatus",
    "ConfigItem", "ConfigSetItem", "ConfigUpdate", "Delivery", "PublishReply", "SubscribeReply",
    "BindingEvent", "BindingSubscribeReply", "InvokeBindingReply",
]
