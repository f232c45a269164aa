"""The control worker's activities over a test's stores, without a worker or Temporal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from activities.control import ControlActivities
from domain.application import Network
from infra.settings import Settings
from infra.storage import FilesystemStore
from readmodel.schema import ViewDB


@contextmanager
def control_activities(settings: Settings) -> Iterator[ControlActivities]:
    """The control activities over these stores; their scheduler thread is stopped and the
    stores closed after (the thread would go on looking at a schema the test has dropped)."""
    views = ViewDB(settings)
    acts = ControlActivities(
        Network(env=settings.eventsourcing_env()), views,
        FilesystemStore(settings.home / "storage"), settings,
    )
    try:
        yield acts
    finally:
        acts.scheduler.stop()
        acts.network.close()
        views.close()
