"""The node's task executor: this installation's ClientApp, for approved apps only.

A SuperNode started with ``--isolation process`` runs no app code itself: it queues each
message as a ClientApp task on its local Runtime API and waits for an executor to claim
it. Flower's own executor (``flower-superexec`` launching ``flwr-clientapp``) installs the
run's FAB and imports the ClientApp from it, which is code chosen by whoever submitted
the run. This executor never installs, unpacks or imports anything from a FAB:

1. It claims tasks with the SuperExec secret the SuperNode was started with (Flower's
   HMAC-signed ``AcquireTask``), so no other process can take the node's tasks.
2. It hashes the run's FAB (sha256 of its bytes, Flower's ``fab_hash``) and compares it
   with the apps the partner approved. A run of any other app gets an error reply that
   names the app and its hash: the coordinator sees a refusal, and nothing of the FAB
   runs here.
3. An approved run is answered by ``client.app.app``, the ClientApp installed on this
   machine, which reads the partner's data, enforces its budget and signs its ledger.

Tasks run one at a time in this long-lived process, so what the ClientApp keeps per
process (data, model, embeddings) is reused across rounds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import RetryInvoker, exponential
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

log = logging.getLogger("fedpriv.executor")

# What Flower's SuperExec signs with the secret (its `_SUPEREXEC_AUTH_METHODS`).
_CLAIM = "/flwr.proto.Runtime/AcquireTask"
REFUSED_CODE = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
RETRY_SECONDS = 120.0


@dataclass(frozen=True)
class ApprovedApps:
    """The FAB hashes (sha256, hex) whose runs this node takes part in."""

    hashes: frozenset[str]

    def refusal(self, fab_id: str, fab_version: str, fab_content: bytes) -> str | None:
        """Why a run of this FAB is refused here, or None if the partner approved it.

        The hash is taken of the bytes received, never the one the run announces.
        """
        digest = hashlib.sha256(fab_content).hexdigest()
        if digest in self.hashes:
            return None
        return (f"app {fab_id or '?'} {fab_version or '?'} sha256 {digest} is not approved "
                "on this node; the partner runs only apps it approved (fedpriv client "
                "--approve-app HASH, after reviewing it)")


def _runtime_client(address: str, *interceptors: object, retry: bool = True
                    ) -> RuntimeHttpClient:
    """A client of the SuperNode's local Runtime API (plain HTTP on loopback).

    Within a task, a call is retried for a while (`_retries`); the claim loop retries by
    itself, so that it notices at once when the SuperNode is gone.
    """
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      *interceptors],
        retry_invoker=_retries() if retry else None)


def _retries() -> RetryInvoker:
    """Retry a SuperNode that is briefly unavailable, for up to two minutes, then give up.

    Not Flower's `make_simple_http_retry_invoker`: made for a one-task process, it retries
    forever and answers a 401 by sending SIGINT to its own process, which here is the
    node itself. A task that cannot finish fails; the node goes on with the next one.
    """
    return RetryInvoker(
        wait_gen_factory=lambda: exponential(max_delay=10),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None, max_time=RETRY_SECONDS,
        should_giveup=lambda exc: (isinstance(exc, httpx.HTTPStatusError)
                                   and exc.response.status_code < 500))


def serve(address: str, secret: bytes, approved: ApprovedApps, client_app: ClientApp,
          keep_going: Callable[[], bool], poll_interval: float = 0.5) -> None:
    """Claim and run this node's ClientApp tasks until `keep_going()` turns false."""
    claims = _runtime_client(address, SuperExecAuthHttpInterceptor(
        master_secret=secret, protected_methods={_CLAIM}), retry=False)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while keep_going():
            try:
                claimed = claims.AcquireTask(request)
            except Exception as exc:  # noqa: BLE001 - the SuperNode restarting or gone
                log.debug("no task claimed: %s", exc)
                time.sleep(poll_interval)
                continue
            if claimed.HasField("task") and claimed.token:
                try:
                    run_task(address, claimed.token, approved, client_app)
                except Exception:  # noqa: BLE001 - a dead executor would hang the node
                    log.exception("task could not be closed; taking the next one")
            else:
                time.sleep(poll_interval)
    finally:
        claims.close()


def run_task(address: str, token: str, approved: ApprovedApps, client_app: ClientApp) -> None:
    """Answer one claimed task: refuse an unapproved app, else run our ClientApp on it."""
    client = _runtime_client(address, RuntimeTokenHttpInterceptor(token))
    heartbeat = HeartbeatSender(_heartbeat(client))
    context: Context | None = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        reply, status, details = _answer(message, context, run.fab_id, run.fab_version,
                                         fab.content, approved, client_app)
        push_message(client, reply, context)
    except Exception as exc:  # noqa: BLE001 - one task failing must not stop the node
        log.exception("task failed: %s", exc)
        details = f"{type(exc).__name__}: {exc}"
    finally:
        if heartbeat.is_running:
            heartbeat.stop()
        try:
            push_task_output(client=client, context=context, sub_status=status,
                             details=details)
        except Exception as exc:  # noqa: BLE001 - see below
            # The SuperNode revokes a task's token once it finished the task itself (it
            # could not pull the message from a coordinator that went away, or our
            # heartbeat lapsed): the status is then its to report, not ours.
            log.warning("task status not recorded (the SuperNode closed the task): %s", exc)
        client.close()


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The claimed task's message, context, run and FAB, as Flower's ``flwr-clientapp``
    pulls them, but waiting at most `RETRY_SECONDS` for the message's content.

    The SuperNode creates the task before it has the content from the coordinator. If the
    coordinator dies in between (killed while it sent the round's weights), the content
    never comes; Flower would wait two hours for it, and since this executor answers one
    task at a time, the node would answer nothing else meanwhile.
    """
    task = client.PullTaskInput(PullTaskInputRequest())
    context, run = context_from_proto(task.context), run_from_proto(task.run)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode has no message for this task")
    tree, node = pulled.message_object_trees[0], Node(node_id=context.node_id)
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, max_time=RETRY_SECONDS)
    # The deflated message does not carry its own id (its object id).
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab_from_proto(task.fab)


def _answer(message: Message, context: Context, fab_id: str, fab_version: str,
            fab_content: bytes, approved: ApprovedApps, client_app: ClientApp
            ) -> tuple[Message, str, str]:
    """The reply to one message, with the task's final status and details."""
    refusal = approved.refusal(fab_id, fab_version, fab_content)
    if refusal is not None:
        log.error("refusing run %s: %s", context.run_id, refusal)
        return (Message(Error(code=REFUSED_CODE, reason=f"refused: {refusal}"),
                        reply_to=message), SubStatus.FAILED, refusal)
    try:
        return client_app(message=message, context=context), SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - reported to the coordinator as Flower does
        log.exception("the ClientApp raised an exception")
        reason = f"{type(exc).__name__}: {exc}"
        return (Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                        reply_to=message), SubStatus.FAILED, reason)


def _heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """Flower's task heartbeat, minus its SIGINT: a stopped run must not stop the node."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            client.SendTaskHeartbeat(request)
        except Exception:  # noqa: BLE001 - retried by HeartbeatSender with backoff
            return False
        return True

    return beat
