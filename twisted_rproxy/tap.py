"""
The C{twistd rproxy} command: its options and the service it runs.

This is the only module that imports the global reactor.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from typing import Any, cast

from attrs import evolve
from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from twisted_rproxy._twisted import dispatchLeanly
from twisted_rproxy._version import __version__
from twisted_rproxy.config import (
    COMMAND_LINE,
    Config,
    ConfigError,
    configFromArguments,
    loadConfig,
    parseWorkers,
    unixSocketWarnings,
)
from twisted_rproxy.filters import filterWarnings
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.service import ProxyService
from twisted_rproxy.tls import checkTLSFiles

_log = Logger()


class Options(usage.Options):
    """
    The options of C{twistd rproxy}.
    """

    synopsis = (
        "[--config FILE | --listen ENDPOINT --backend URL [--backend URL ...] "
        "[--static DIR] | --demo] [--check]"
    )
    longdesc = (
        "Run twisted_rproxy, a reverse proxy. Give a TOML configuration "
        "file with --config, or a plain proxy on the command line: --listen "
        "(a Twisted server endpoint, such as tcp:8080:interface=127.0.0.1; "
        "repeatable) and one --backend URL per backend server (one round-robin "
        "pool), and/or --static DIR. --demo runs a demonstration on "
        "127.0.0.1:8080. --check validates the configuration and exits."
    )
    optFlags = [
        [
            "check",
            None,
            "Validate the configuration and exit: status 0 if it is good, "
            "1 with the problem (file, key, what is wrong) if not.",
        ],
        [
            "demo",
            None,
            "Run the demonstration: the proxy on 127.0.0.1:8080 (or --listen) "
            "in front of built-in demo backends, and its admin page on "
            "127.0.0.1:9000.",
        ],
        ["version", None, "Print the version and exit."],
    ]
    optParameters = [
        ["config", "c", None, "The TOML configuration file."],
        [
            "static",
            None,
            None,
            "A directory to serve (on / without backends, else under "
            "--static-prefix).",
        ],
        ["static-prefix", None, "/", "The path prefix of --static."],
        [
            "access-log",
            None,
            None,
            "Write a combined-format access log to this file ('-': standard "
            "output). Off by default.",
        ],
        [
            "workers",
            "w",
            None,
            'Worker processes sharing the listeners: a number or "auto" (one '
            "per CPU); overrides [server] workers. 1 runs a single process.",
        ],
        [
            "worker-listeners",
            None,
            None,
            "(Internal: set by the supervising process for its workers.)",
        ],
        ["worker-index", None, None, "(Internal: the worker's number.)"],
        [
            "worker-state",
            None,
            None,
            "(Internal: the supervisor's run directory of the workers' counts.)",
        ],
    ]

    def __init__(self) -> None:
        # mypy reports super() calls to Twisted's untyped methods despite
        # untyped_calls_exclude (python/mypy#16653).
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["backends"] = []

    # twistd prints these docstrings as they are: one line each, so that
    # --help wraps them without stray blanks.
    def opt_listen(self, endpoint: str) -> None:
        """A server endpoint, e.g. tcp:8080:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_backend(self, url: str) -> None:
        """A backend URL, e.g. http://127.0.0.1:8001 (repeatable: one pool)."""
        self["backends"].append(url)

    opt_b = opt_backend

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"twisted_rproxy {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """
        Check that the options fit together, load the configuration, and
        answer C{--check}.

        A configuration mistake ends the command with status 1 and a one-line
        message, without a traceback or the whole usage text.
        """
        fromArguments = (
            self["listen"] or self["backends"] or self["static"] or self["access-log"]
        )
        if self["config"] and (fromArguments or self["demo"]):
            raise usage.UsageError(
                "--config can't be combined with --listen, --backend, --static, "
                "--access-log or --demo"
            )
        if self["demo"] and (self["backends"] or self["static"]):
            raise usage.UsageError(
                "--demo can't be combined with --backend or --static"
            )
        if not (self["config"] or self["backends"] or self["static"] or self["demo"]):
            raise usage.UsageError(
                "nothing to run: give --config FILE, --backend URL (and --listen), "
                "--static DIR, or --demo"
            )
        self.rproxyConfig: Config | None = None
        if self["demo"]:
            if self["check"]:
                print("twisted_rproxy: the demo configuration is built in and valid")
                raise SystemExit(0)
            return
        try:
            if self["config"]:
                self.rproxyConfig = loadConfig(self["config"])
            else:
                self.rproxyConfig = configFromArguments(
                    self["listen"],
                    self["backends"],
                    self["static"],
                    self["static-prefix"],
                    self["access-log"],
                )
            # Certificates and keys are read now, so that a bad one stops the
            # start (and --check) with one line instead of a traceback. A
            # missing backend socket is only a warning: it may appear later.
            warnings = checkTLSFiles(self.rproxyConfig)
            warnings += unixSocketWarnings(self.rproxyConfig)
        except ConfigError as e:
            sys.stderr.write(f"twisted_rproxy: {e}\n")
            raise SystemExit(1) from None
        for warning in warnings:
            sys.stderr.write(
                f"twisted_rproxy: {self.rproxyConfig.source}: warning: {warning}\n"
            )
        if self["workers"] is not None:
            try:
                workers = parseWorkers(self["workers"], COMMAND_LINE, "--workers")
            except ConfigError as e:
                raise usage.UsageError(e.message) from None
            self.rproxyConfig = evolve(
                self.rproxyConfig,
                server=evolve(self.rproxyConfig.server, workers=workers),
            )
        if self["check"]:
            # After --workers: a per-worker rate limit is worth a warning.
            for warning in filterWarnings(self.rproxyConfig):
                sys.stderr.write(
                    f"twisted_rproxy: {self.rproxyConfig.source}: warning: {warning}\n"
                )
            print(f"twisted_rproxy: {self.rproxyConfig.source}: configuration OK")
            raise SystemExit(0)

    def rproxyArguments(self) -> list[str]:
        """
        The options that give a worker process the same configuration.
        """
        if self["config"]:
            return ["--config", os.path.abspath(self["config"])]
        arguments: list[str] = []
        for endpoint in self["listen"]:
            arguments += ["--listen", endpoint]
        for url in self["backends"]:
            arguments += ["--backend", url]
        if self["static"]:
            arguments += [
                "--static",
                os.path.abspath(self["static"]),
                "--static-prefix",
                self["static-prefix"],
            ]
        if self["access-log"]:
            log = self["access-log"]
            arguments += ["--access-log", log if log == "-" else os.path.abspath(log)]
        return arguments


def makeService(options: Options) -> IService:
    """
    The service C{twistd rproxy} runs for C{options}.
    """
    from twisted.internet import reactor

    # The global reactor provides each of IProxyReactor's bases (TCP, SSL, UNIX,
    # time, core), but Twisted types it as _IReactorCommon, which leaves IReactorSSL
    # out; and it does not declare IProxyReactor itself, so adapting it with
    # IProxyReactor(...) would fail.
    proxyReactor = cast(IProxyReactor, reactor)
    if not getattr(reactor, "running", False):
        # twistd starts the reactor after this: once it runs, start-up is
        # over. (A reactor already running is a host application's.) The
        # epoll reactor's dispatch of each event, in the same log context,
        # costs a fifth of what Twisted's own does.
        proxyReactor.callWhenRunning(freezeStartupObjects)
        dispatchLeanly(reactor)
    if options["demo"]:
        from twisted_rproxy.demo import (
            demoConfig,
            demoStaticDirectory,
            startDemoBackends,
        )

        backends = startDemoBackends(proxyReactor)
        parent = MultiService()
        # mypy names these calls after our subclasses, so untyped_calls_exclude
        # misses Twisted's untyped Service.setServiceParent (python/mypy#16651).
        backends.setServiceParent(parent)  # type: ignore[no-untyped-call]
        staticDirectory = demoStaticDirectory()
        backends.directories.append(staticDirectory)
        config = demoConfig(backends, tuple(options["listen"]), staticDirectory)
        proxy = ProxyService(config, proxyReactor)
        proxy.setServiceParent(parent)  # type: ignore[no-untyped-call]
        return parent
    assert options.rproxyConfig is not None
    config = options.rproxyConfig
    inherited = options["worker-listeners"]
    if inherited is None:
        # Once, by the process that starts: not again by each worker.
        for warning in filterWarnings(config):
            _log.warn(
                "{source}: warning: {warning}", source=config.source, warning=warning
            )
    if config.server.workers > 1 and inherited is None:
        from twisted_rproxy.workers import WorkerSupervisor

        supervisor = WorkerSupervisor(
            proxyReactor, config, options.rproxyArguments(), config.server.workers
        )
        _installSignal(proxyReactor, "SIGHUP", supervisor.signalWorkers, signal.SIGHUP)
        _installSignal(
            proxyReactor, "SIGUSR1", supervisor.signalWorkers, signal.SIGUSR1
        )
        return supervisor
    service = ProxyService(config, proxyReactor)
    if inherited is not None:
        listeners = {
            description: (fd, family)
            for description, (fd, family) in json.loads(inherited).items()
        }
        service.inheritedListeners = listeners
        if service.admin is not None:
            service.admin.inheritedListeners = listeners
            service.admin.worker = options["worker-index"]
    installReloadHandler(proxyReactor, service, options["config"])
    _installSignal(proxyReactor, "SIGUSR1", _reopenLogs, service)
    if inherited is None:
        return service
    from twisted_rproxy.workers import FORWARDED_SIGNALS

    # A worker starts with these blocked (see WorkerSupervisor._spawn):
    # one the supervisor passed on meanwhile is handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    stateDirectory = options["worker-state"]
    if stateDirectory is None or service.admin is None:
        return service
    from twisted.internet.interfaces import IReactorUNIX

    from twisted_rproxy.peers import WorkerTotals
    from twisted_rproxy.workers import WorkerService

    totals = WorkerTotals(
        cast(IReactorUNIX, reactor),
        proxyReactor,
        stateDirectory,
        int(options["worker-index"] or 0),
        service.admin.snapshot,
    )
    service.admin.workerTotals = totals
    return WorkerService(service, totals)


#: Container objects allocated (less those freed) between two collections of
#: the youngest generation: Python's default is 700.
YOUNG_THRESHOLD = 7000


def freezeStartupObjects() -> None:
    """
    Take what the process built to start (modules, configuration, routes,
    pools: tens of thousands of objects that live as long as it does) out
    of the cyclic garbage collector's reach, as C{gc.freeze} does, and let
    the youngest generation grow to L{YOUNG_THRESHOLD} before it is
    collected.

    Without the freeze every full collection walks them all: with a proxy's
    modules that was tens of milliseconds, during which no request moved,
    and the slowest requests of a keep-alive load were those waiting on one
    (issue #18). What start-up left as garbage is collected first.

    A request's objects are freed by reference counting, so a young
    collection walks only what is still alive: the requests in progress,
    about as many at 7,000 allocations as at 700. Ten times fewer young
    collections saved 3% of the instructions of a proxied request, with or
    without keep-alive (callgrind, 50 connections); each takes about a
    millisecond at most. An application embedding the proxy decides this
    for its own process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _installSignal(
    reactor: IProxyReactor, name: str, handler: Any, *args: object
) -> None:
    """
    Run C{handler(*args)} in the reactor thread when signal C{name} comes.
    """
    signum = getattr(signal, name, None)
    if signum is None:  # pragma: no cover (Windows)
        return

    def onSignal(received: int, frame: Any) -> None:
        reactor.callFromThread(handler, *args)  # type: ignore[attr-defined]

    signal.signal(signum, onSignal)


def _reopenLogs(service: ProxyService) -> None:
    """
    What SIGUSR1 does: reopen the access log (after logrotate moved it).
    """
    _log.info("Reopening the access log")
    service.site.reopenAccessLog()
    if service.plainSite is not service.site:
        service.plainSite.reopenAccessLog()  # type: ignore[attr-defined]


def installReloadHandler(
    reactor: IProxyReactor, service: ProxyService, configPath: str | None = None
) -> None:
    """
    Make SIGHUP reload what can be reloaded without a restart.

    @param configPath: The configuration file to read again, if the service
        runs one.

    There is one SIGHUP handler; whatever else reloads on SIGHUP belongs in
    L{_reload}, which runs in the reactor thread.
    """
    if not hasattr(signal, "SIGHUP"):  # pragma: no cover (Windows)
        return

    def onSignal(signum: int, frame: Any) -> None:
        # A signal handler interrupts whatever runs; the reload waits for the
        # reactor's next turn instead.
        reactor.callFromThread(_reload, service, configPath)  # type: ignore[attr-defined]

    signal.signal(signal.SIGHUP, onSignal)


def _reload(service: ProxyService, configPath: str | None = None) -> None:
    """
    What SIGHUP does: read the configuration file again and run it with
    L{ProxyService.reload} (which reads the TLS certificates again too). A
    file with a mistake is logged and the running configuration kept
    (its certificates are still read again). Without a file (a
    command-line configuration), only the certificates are read again.
    """
    if configPath is None:
        service.reloadCertificates()
        return
    try:
        config = loadConfig(configPath)
        checkTLSFiles(config)
    except ConfigError as e:
        _log.error(
            "Reload refused, the running configuration stays: {error}", error=str(e)
        )
        service.reloadCertificates()
        return
    try:
        service.reload(config)
    except Exception:
        _log.failure("Reload failed; the running configuration stays")
