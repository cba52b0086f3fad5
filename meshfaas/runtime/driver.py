"""The one trio driver of any sans-IO core.

Theory of operation
-------------------
A :class:`Driver` owns one core and feeds it every input on the event loop
thread: peer frames (:meth:`Driver.deliver_frame`, decoded with the cluster's
codec; a bad frame is a counted drop), local commands (:meth:`Driver.command`),
effect results and ticks. After each input it *pumps*: it takes every
``Ready`` batch the core has and dispatches it under the contract of
meshfaas.core.types:

* ``notifications`` go first to observers (synchronous callbacks, e.g. the node
  updating its address book from gossip) and to subscribers' bounded channels
  (a full one drops, counted);
* ``send_now`` goes to the transport at once;
* ``effects`` start at once, each in its own task, through the async handler
  registered for its ``kind``; the :class:`EffectResult` (an error result if no
  handler exists or the handler raised) goes back through ``on_result``;
* ``persist`` joins the *pending* queue, in ``seq`` order. The persister task
  takes everything pending (every batch of the inputs handled since it last
  ran: one fsync covers them all, group commit), stages it in the store and
  syncs. Only when ``sync`` has returned does it send each batch's
  ``send_after_persist`` and then call ``on_persisted(seq)``.

A batch with nothing to persist is finished at once, unless earlier batches are
still pending: acknowledgements always go in ``seq`` order.

*Bursts.* A caller that hands the driver a burst of inputs from one socket
owner's turn (the node's peer ROUTER and client ROUTER) calls :meth:`Driver.hold`
before each input and :meth:`Driver.flush` at the end of the burst. The
batches the burst leaves to persist do not wake the persister task: ``flush``
writes and syncs them itself when the sync would run on the loop's thread
anyway (below), so a follower's ``Accept`` -> fsync -> ``Accepted`` costs no
task switch, and one sync still covers the whole burst (group commit); any
other sync it hands to the persister. A batch behind a sync that is still
running in a worker waits for it (order is kept), and a ``flush`` sync that
fails never raises into the socket owner: the batches are dropped unsent and
the persister raises the error out of :meth:`Driver.run`.

*Where the sync runs.* With ``all_syncs_in_loop`` (the mesh node's choice)
every sync runs on the loop's thread: a Paxos leader's own vote is then synced
in the flush that ends the client's burst, after its ``Accept`` messages left
and while the followers work, which on this 2-vCPU VM cost about 0.3 ms less
CPU per commit than the worker thread's round trip (and at 256 clients the same
throughput; docs/performance.md, fourth pass). Otherwise a sync that has
messages waiting behind it (some
batch in it has ``send_after_persist``: a Paxos follower's ``Accepted``, a
``Promise``) runs on the loop's thread (``sync_in_loop``, the default): the
peer waits for exactly that, and handing the sync to a worker thread and back
costs two thread wake-ups (0.1 to 0.3 ms each on a loaded 2-vCPU VM) and
about 0.2 ms of CPU; inputs that arrive meanwhile queue in the sockets and the
next sync covers them. Every other sync (a Paxos leader's own vote, which
counts once durable while its loop handles the followers' votes meanwhile;
invocation results), and every sync with ``sync_in_loop=False``, runs in a
worker thread (``trio.to_thread.run_sync``), so the loop keeps running during
the fsync; batches that arrive meanwhile wait for the next sync.

*Lazy tables.* Writes to ``lazy_tables`` (the node's invocation results: their
reply has already left, as a notification, before any sync) may wait up to
``lazy_delay_s`` for company, so that one sync covers the results of many
invocations instead of one each. The wait ends at once when an *urgent* batch
arrives: one that writes any other table or has after-persist sends (Paxos,
gossip), so consensus latency is untouched. On cancellation the persister
writes and syncs what is pending before it ends.

The ticker task sleeps in one cancel scope whose ``deadline`` is the core's
``next_deadline()`` converted from the :class:`Clock` port's ``mono_ns`` to
trio's clock (a pair of readings of both clocks, taken each time the ticker
wakes); every pump that changes the core's next deadline moves the scope's
deadline, earlier or later, which wakes nobody (within a burst, only the flush
at its end does: no task runs before it, and the core's next deadline is read
once per burst instead of once per input). When trio reaches that deadline
the ticker wakes and calls ``tick`` if a deadline is due by the driver's clock
(never early), then sleeps in a new scope. A deadline moved later or cancelled
causes no wake-up at all.

A sync that fails (:class:`~meshfaas.runtime.store.StoreError`) is not survivable
for the batches in it: their after-persist messages must never leave. The error
propagates out of :meth:`Driver.run`, which stops the node; on restart the core
recovers from what ``load`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import trio

from meshfaas.core.codec import Codec, DecodeError
from meshfaas.core.types import (
    NS_PER_S,
    Clock,
    Core,
    DurableStore,
    Effect,
    EffectResult,
    NodeId,
    Notification,
    Outbound,
    Ready,
    Transport,
)
from meshfaas.runtime.zsock import Counters

T = TypeVar("T")
EffectHandler = Callable[[Effect], Awaitable[EffectResult]]
DEFAULT_SUBSCRIBER_CAPACITY = 1024


def drain_nowait(channel: trio.MemoryReceiveChannel[T], limit: int = 1024) -> Iterator[T]:
    """Whatever ``channel`` holds right now (at most ``limit`` items), without waiting."""
    for _ in range(limit):
        try:
            yield channel.receive_nowait()
        except trio.WouldBlock:
            return


class Driver:
    """Drives one core with trio; see the module docstring for the contract."""

    def __init__(
        self,
        core: Core,
        *,
        node_id: NodeId,
        transport: Transport,
        codec: Codec,
        store: DurableStore,
        clock: Clock,
        handlers: dict[str, EffectHandler] | None = None,
        aliases: frozenset[str] = frozenset(),
        lazy_tables: frozenset[str] = frozenset(),
        lazy_delay_s: float = 0.0,
        sync_in_loop: bool = True,
        all_syncs_in_loop: bool = False,
    ) -> None:
        self.core = core
        self.node_id = node_id
        self.transport = transport
        self.codec = codec
        self.store = store
        self.clock = clock
        self.stats = Counters()
        self._handlers: dict[str, EffectHandler] = dict(handlers or {})
        self._starters: dict[str, Callable[[Effect], None]] = {}
        self._addresses = frozenset({node_id}) | aliases  # what a frame's dst may say
        self._observers: list[Callable[[Notification], None]] = []
        self._subscribers: list[tuple[frozenset[str] | None, trio.MemorySendChannel[Notification]]] = []
        self._pending: list[Ready] = []
        self._has_pending = trio.Event()
        self._lazy_tables = lazy_tables
        self._lazy_delay_s = lazy_delay_s
        self._sync_in_loop = sync_in_loop
        self._all_syncs_in_loop = sync_in_loop and all_syncs_in_loop
        self._holding = False  # inside a burst of inputs that flush() will end
        self._held_urgent = False
        self._failure: Exception | None = None  # a sync in flush() failed: run() raises it
        self._urgent = trio.Event()  # set when a pending batch may not wait (see docstring)
        self._syncing = False
        self._pumping = False
        self._nursery: trio.Nursery | None = None
        self._tick_scope: trio.CancelScope | None = None
        self._tick_deadline: int | None = None
        self._trio_ref_s = 0.0  # trio's clock and the driver's, read together
        self._mono_ref_ns = 0

    # -- registration ---------------------------------------------------------

    def register_effect(self, kind: str, handler: EffectHandler,
                        start: Callable[[Effect], None] | None = None) -> None:
        """Run ``handler`` for each effect of ``kind``; ``start``, if given, is called
        synchronously when the effect is dispatched, before the handler's task is
        spawned (it may begin the work at once: the handler's task runs only after
        the current one yields). ``start`` must not raise and must not block."""
        self._handlers[kind] = handler
        if start is not None:
            self._starters[kind] = start

    def observe(self, observer: Callable[[Notification], None]) -> None:
        """Call ``observer`` (synchronously, must not block) with every notification,
        before the sends of the same batch leave: e.g. to learn a new member's
        address before the reply to it is sent. An observer may call ``command``:
        the output joins the running pump, after this batch."""
        self._observers.append(observer)

    def subscribe(
        self, kinds: frozenset[str] | None = None, capacity: int = DEFAULT_SUBSCRIBER_CAPACITY
    ) -> trio.MemoryReceiveChannel[Notification]:
        """Notifications of ``kinds`` (all if None); closing the channel unsubscribes."""
        send, recv = trio.open_memory_channel[Notification](capacity)
        self._subscribers.append((kinds, send))
        return recv

    def counters(self) -> dict[str, int]:
        return self.stats.snapshot()

    # -- inputs -----------------------------------------------------------------

    def deliver_frame(self, frame: bytes) -> None:
        """A frame from a peer: decode it and hand it to the core, or count a drop."""
        try:
            env = self.codec.decode(frame)
        except DecodeError:
            self.stats.inc("decode_errors")
            return
        if env.dst not in self._addresses:
            self.stats.inc("dropped_misaddressed")
            return
        self.deliver(NodeId(env.src), env.msg)

    def deliver(self, src: NodeId, msg: Any) -> None:
        if self._nursery is None:
            self._require_running()
        self.stats.inc("handled")
        self.core.handle(src, msg, self.clock.now())
        self._pump()

    def command(self, cmd: Any) -> Any:
        """Run a local command on the core; returns the core's answer."""
        if self._nursery is None:
            self._require_running()
        result = self.core.command(cmd, self.clock.now())
        self._pump()
        return result

    def hold(self) -> None:
        """The inputs from now until :meth:`flush` are one burst: the batches
        they leave to persist wait for the flush instead of waking the persister
        task. The caller must call ``flush`` when the burst ends, before it
        yields to the loop (PeerTransport's ``on_burst_end``)."""
        self._holding = True

    def flush(self) -> None:
        """The burst of inputs ended: persist what it left, here when the sync has
        sends waiting behind it (see the module docstring), else by waking the
        persister. Never raises: a failed sync stops :meth:`run`."""
        self._holding = False
        urgent, self._held_urgent = self._held_urgent, False
        if self._pending and self._failure is None:
            if urgent and not self._syncing and self._in_loop(self._pending):
                self._persist_here()  # its pump (or its failure) re-times the ticker
                return
            self._wake_persister(urgent)
        self._retime()

    def _require_running(self) -> None:
        if self._nursery is None:
            raise RuntimeError("the driver is not running: start Driver.run in a nursery first")

    # -- lifetime -----------------------------------------------------------------

    async def run(
        self,
        inbound: trio.MemoryReceiveChannel[bytes] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Drive the core until cancelled (or until a sync fails: see the docstring)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._persister)
            nursery.start_soon(self._ticker)
            if inbound is not None:
                nursery.start_soon(self._read_inbound, inbound)
            self._pump()
            task_status.started()

    async def _read_inbound(self, inbound: trio.MemoryReceiveChannel[bytes]) -> None:
        """Handle frames a burst at a time: everything already queued is handled
        without yielding, so the sends it causes leave together (one io-thread
        wake-up per burst instead of one per frame)."""
        async for frame in inbound:
            self.deliver_frame(frame)
            for more in drain_nowait(inbound):
                self.deliver_frame(more)

    # -- the pump -----------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:  # an input from inside a pump: the running pump takes it
            return
        self._pumping = True
        try:
            while (ready := self.core.take_ready()) is not None:
                self._dispatch(ready)
        finally:
            self._pumping = False
        if not self._holding:  # a burst's flush re-times the ticker once, at its end
            self._retime()

    def _retime(self) -> None:
        """Move the ticker's deadline to the core's next one, if it changed."""
        if self._tick_scope is not None:
            deadline = self.core.next_deadline()
            if deadline != self._tick_deadline:
                self._set_tick_deadline(deadline)

    def _dispatch(self, ready: Ready) -> None:
        for note in ready.notifications:
            self._notify(note)
        self._send(ready.send_now)
        for effect in ready.effects:
            self._start_effect(effect)
        if ready.persist or self._pending or self._syncing:
            self._pending.append(ready)
            if self._holding:  # flush() decides at the end of the burst
                self._held_urgent = self._held_urgent or self._is_urgent(ready)
            else:
                self._wake_persister(self._is_urgent(ready))
        else:
            self._finish(ready)

    def _wake_persister(self, urgent: bool) -> None:
        self._has_pending.set()
        if urgent:
            self._urgent.set()

    def _finish(self, ready: Ready) -> None:
        """The batch is durable: its after-persist messages may leave, then ack."""
        self._send(ready.send_after_persist)
        self.core.on_persisted(ready.seq)

    def _send(self, outbound: tuple[Outbound, ...]) -> None:
        """Send a batch's messages; one sent to several peers (an Accept, a
        heartbeat) is encoded once and framed per peer."""
        if not outbound:
            return
        bodies: dict[int, bytes] = {}
        for out in outbound:
            body = bodies.get(id(out.msg))
            if body is None:
                body = bodies[id(out.msg)] = self.codec.encode_message(out.msg)
            frame = self.codec.frame(self.node_id, out.dst, body, out.msg)
            self.stats.inc("sent" if self.transport.send(out.dst, frame) else "send_dropped")

    # -- persisting ---------------------------------------------------------------

    def _is_urgent(self, ready: Ready) -> bool:
        if not self._lazy_delay_s or ready.send_after_persist:
            return True
        return any(w.table not in self._lazy_tables for w in ready.persist)

    async def _persister(self) -> None:
        try:
            while True:
                await self._has_pending.wait()
                if not self._urgent.is_set():  # only lazy writes: let more join them
                    with trio.move_on_after(self._lazy_delay_s):
                        await self._urgent.wait()
                if self._failure is not None:
                    raise self._failure
                await self._persist_pending()
        except trio.Cancelled:
            self._flush_on_exit()
            raise

    def _flush_on_exit(self) -> None:
        """Cancelled: make what is staged durable (blocking; only at shutdown)."""
        writes = [w for b in self._pending for w in b.persist]
        if not writes:
            return
        try:
            self.store.write(writes)
            self.store.sync()
        except Exception:  # best effort while stopping: the core recovers from disk
            self.stats.inc("exit_flush_failed")

    def _stage(self, batches: list[Ready]) -> bool:
        """Write the batches' rows to the store; True if it then has something to
        sync (a store that staged none of them for its sync, e.g. the node's result
        rows, which have their own writer, says so: no sync then)."""
        writes = [w for b in batches for w in b.persist]
        if not writes:
            return False
        self.store.write(writes)
        has_staged = getattr(self.store, "has_staged", None)
        return has_staged is None or bool(has_staged())

    def _in_loop(self, batches: list[Ready]) -> bool:
        """Whether these batches' sync runs on the loop's thread (docstring)."""
        if self._all_syncs_in_loop:
            return True
        return self._sync_in_loop and any(b.send_after_persist for b in batches)

    async def _persist_pending(self) -> None:
        """The persister's turn: everything pending, in a worker thread or not."""
        self._has_pending = trio.Event()  # (only this task waits on these events)
        self._urgent = trio.Event()
        batches, self._pending = self._pending, []
        in_loop = self._in_loop(batches)
        self._syncing = True
        try:
            if self._stage(batches):
                if in_loop:
                    self.store.sync()
                else:
                    await trio.to_thread.run_sync(self.store.sync)
                self.stats.inc("syncs")
        finally:
            self._syncing = False
        self._finish_all(batches)

    def _persist_here(self) -> None:
        """flush()'s sync, on the loop's thread, without the persister task. A
        persister woken meanwhile finds nothing pending (or the failure)."""
        batches, self._pending = self._pending, []
        try:
            if self._stage(batches):
                self.store.sync()
                self.stats.inc("syncs")
                self.stats.inc("syncs_in_flush")
        except Exception as exc:  # the batches are lost: their sends never leave
            self._failure = exc
            self._wake_persister(urgent=True)
            self._retime()
            return
        self._finish_all(batches)

    def _finish_all(self, batches: list[Ready]) -> None:
        self.stats.inc("batches_persisted", len(batches))
        for ready in batches:
            self._finish(ready)
        self._pump()

    # -- time ---------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._tick_scope = scope
                self._sync_clocks()
                self._set_tick_deadline(self.core.next_deadline())
                try:
                    await trio.sleep_forever()
                finally:
                    self._tick_scope = None
            now = self.clock.now()
            due = self.core.next_deadline()  # it may have moved meanwhile
            if due is not None and now.mono_ns >= due:
                self.stats.inc("ticks")
                self.core.tick(now)
                self._pump()

    def _sync_clocks(self) -> None:
        """Pair a reading of the driver's clock with one of trio's (a deadline
        is converted from the one to the other; see _set_tick_deadline). The
        driver's clock is read first, so a converted deadline errs late by the
        time between the two reads, never early (an early wake finds nothing
        due and sleeps again, which trio's millisecond timeouts may round up)."""
        self._mono_ref_ns = self.clock.now().mono_ns
        self._trio_ref_s = trio.current_time()

    def _set_tick_deadline(self, deadline: int | None) -> None:
        """Move the ticker's scope deadline (this wakes nobody; trio cancels the
        scope, waking the ticker, only when the deadline is reached)."""
        assert self._tick_scope is not None
        self._tick_deadline = deadline
        self._tick_scope.deadline = (math.inf if deadline is None else
                                     self._trio_ref_s + (deadline - self._mono_ref_ns) / NS_PER_S)

    # -- effects and notifications ----------------------------------------------

    def _start_effect(self, effect: Effect) -> None:
        assert self._nursery is not None
        self.stats.inc("effects")
        start = self._starters.get(effect.kind)
        if start is not None:
            start(effect)
        self._nursery.start_soon(self._run_effect, effect)

    async def _run_effect(self, effect: Effect) -> None:
        handler = self._handlers.get(effect.kind)
        if handler is None:
            result = EffectResult(effect_id=effect.effect_id, ok=False,
                                  error=f"no handler for effect kind {effect.kind!r}")
        else:
            try:
                result = await handler(effect)
            except Exception as exc:  # the environment failed: a result, not a crash
                result = EffectResult(effect_id=effect.effect_id, ok=False,
                                      error=f"{type(exc).__name__}: {exc}")
        if not result.ok:
            self.stats.inc("effects_failed")
        self.core.on_result(result, self.clock.now())
        self._pump()

    def _notify(self, note: Notification) -> None:
        for observer in self._observers:
            observer(note)
        if not self._subscribers:  # (the mesh node has none: no copy of the list)
            return
        for kinds, send in list(self._subscribers):
            if kinds is not None and note.kind not in kinds:
                continue
            try:
                send.send_nowait(note)
            except trio.WouldBlock:
                self.stats.inc("notifications_dropped")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove((kinds, send))
