"""
The ACME v2 protocol (RFC 8555) on the C{acme} library (the client
certbot is built on, with josepy): account creation and reuse, an order,
its challenges, finalisation and the chain's download.

L{BlockingACMEClient} makes blocking HTTP calls (the library's, over
requests): it runs in a thread (L{twisted_rproxy.acme.manager} sees to it),
never on the reactor's.  What it must do on the reactor (publish a
challenge's answer) it is given as functions.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted_rproxy._version import __version__

__all__ = [
    "ACMEError",
    "BlockingACMEClient",
    "OrderCancelled",
    "describeACMEError",
]

#: Seconds one HTTP call to the CA may take.
NETWORK_TIMEOUT = 30

#: Seconds an order may take from its challenges to its certificate.
ORDER_TIMEOUT = 120.0

#: Seconds of one round of polling the authorizations, between two looks at
#: whether the order was cancelled.
POLL_WINDOW = 2.0


class ACMEError(Exception):
    """
    An order that could not be completed; the message says why, with the
    CA's problem document when it sent one.
    """


class OrderCancelled(ACMEError):
    """
    The order was given up at a step boundary because the proxy stops.
    """


def _neverCancelled() -> bool:
    return False


def _problem(error: Any) -> str:
    """
    An RFC 7807 problem document of the CA, as JSON text.
    """
    try:
        return json.dumps(error.to_partial_json(), sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 - the text is what matters
        return str(error)


def describeACMEError(error: BaseException) -> str:
    """
    What went wrong in an order, for the log and the admin page: the CA's
    problem documents (of the order, or of each failed challenge) as JSON.
    """
    from acme import errors, messages

    if isinstance(error, ACMEError):
        return str(error)
    if isinstance(error, messages.Error):
        return f"the CA refused: {_problem(error)}"
    if isinstance(error, errors.ValidationError):
        parts = []
        for authzr in error.failed_authzrs:
            identifier = authzr.body.identifier.value
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    kind = _challengeType(challb)
                    parts.append(f"{identifier} ({kind}): {_problem(challb.error)}")
        return "validation failed: " + ("; ".join(parts) or "no detail from the CA")
    if isinstance(error, errors.TimeoutError):
        return "the order timed out at the CA"
    return f"{type(error).__name__}: {error}"


def _challengeType(challb: Any) -> str:
    """
    The type of a challenge, whichever class the library parsed it as.
    """
    jobj = getattr(challb.chall, "jobj", None)
    if isinstance(jobj, dict):
        return str(jobj.get("type", "unknown"))
    return str(challb.chall.typ)


def _keyAuthorization(challb: Any, accountKey: Any) -> tuple[str, str]:
    """
    The token and key authorization of a challenge, whichever class the
    library parsed it as (tls-alpn-01 is not one of its own).
    """
    from cryptography.hazmat.primitives import hashes
    from josepy.b64 import b64encode

    chall = challb.chall
    jobj = getattr(chall, "jobj", None)
    token = jobj.get("token") if isinstance(jobj, dict) else chall.encode("token")
    if not isinstance(token, str) or not token:
        raise ACMEError(
            f"the CA sent a {_challengeType(challb)} challenge without a token"
        )
    thumbprint = b64encode(accountKey.thumbprint(hash_function=hashes.SHA256))
    return token, token + "." + thumbprint.decode("ascii")


class BlockingACMEClient:
    """
    One account at one CA, used from one thread at a time.

    @ivar directoryURL: The CA's directory URL.
    @ivar accountURL: The account's URL once L{register} ran.
    """

    def __init__(
        self,
        directoryURL: str,
        accountKeyPEM: bytes,
        email: str | None = None,
        caBundle: str | None = None,
        timeout: int = NETWORK_TIMEOUT,
    ) -> None:
        from acme import client
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from josepy.jwa import ES256, RS256
        from josepy.jwk import JWKEC, JWKRSA

        key = serialization.load_pem_private_key(accountKeyPEM, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            jwk: Any = JWKEC(key=key)
            alg = ES256
        elif isinstance(key, rsa.RSAPrivateKey):
            jwk = JWKRSA(key=key)
            alg = RS256
        else:
            raise ACMEError(f"unsupported account key type {type(key).__name__}")
        self.directoryURL = directoryURL
        self.email = email
        self.accountURL: str | None = None
        self._net = client.ClientNetwork(
            jwk,
            alg=alg,
            # requests takes a CA bundle's path where a bool is declared.
            verify_ssl=caBundle or True,  # type: ignore[arg-type]
            user_agent=f"twisted_rproxy/{__version__}",
            timeout=timeout,
        )
        self._client: Any = None

    def register(self) -> str:
        """
        Create the account, or find the one of this key (the CA answers
        with its URL).

        @return: The account's URL.
        """
        from acme import client, errors, messages

        directory = client.ClientV2.get_directory(self.directoryURL, self._net)
        acme = client.ClientV2(directory, self._net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True
        )
        try:
            regr = acme.new_account(registration)
        except errors.ConflictError as e:
            # An account of this key exists: use it.
            regr = messages.RegistrationResource(
                uri=e.location, body=messages.Registration()
            )
            self._net.account = regr
        self._client = acme
        self.accountURL = regr.uri
        return str(regr.uri)

    def order(
        self,
        domains: Sequence[str],
        keyPEM: bytes,
        challenge: str,
        publish: Callable[[str, str, str], None],
        withdraw: Callable[[str, str], None],
        timeout: float = ORDER_TIMEOUT,
        cancelled: Callable[[], bool] = _neverCancelled,
    ) -> bytes:
        """
        Order a certificate for C{domains} with the key C{keyPEM}.

        @param challenge: C{"http-01"} or C{"tls-alpn-01"}.
        @param publish: Called with the challenge type, its name (the token
            of HTTP-01, the domain of TLS-ALPN-01) and the key authorization
            before the CA is told to validate.
        @param withdraw: Called with the type and name once it is over.
        @param cancelled: Asked between the steps of the order (before each
            request that starts something at the CA, and every
            L{POLL_WINDOW} seconds while polling): once it answers L{True},
            the order stops with L{OrderCancelled}.
        @return: The certificate and its chain, PEM, leaf first.
        @raise OrderCancelled: If C{cancelled} said so.
        @raise Exception: The library's errors (see L{describeACMEError}).
        """
        from acme import challenges, crypto_util, messages

        def checkpoint() -> None:
            if cancelled():
                raise OrderCancelled(
                    f"the order for {', '.join(domains)} was cancelled: the "
                    "proxy is stopping"
                )

        checkpoint()
        if self._client is None:
            self.register()
        acme = self._client
        csr = crypto_util.make_csr(keyPEM, list(domains))
        checkpoint()
        orderr = acme.new_order(csr)
        published: list[tuple[str, str]] = []
        try:
            for authzr in orderr.authorizations:
                checkpoint()
                if authzr.body.status == messages.STATUS_VALID:
                    continue
                domain = authzr.body.identifier.value
                offers = authzr.body.challenges
                chosen = [c for c in offers if _challengeType(c) == challenge]
                if not chosen:
                    offered = ", ".join(_challengeType(c) for c in offers)
                    raise ACMEError(
                        f"the CA offers no {challenge} challenge for {domain} "
                        f"(it offers {offered or 'none'})"
                    )
                challb = chosen[0]
                token, keyAuthorization = _keyAuthorization(challb, self._net.key)
                name = token if challenge == "http-01" else domain
                publish(challenge, name, keyAuthorization)
                published.append((challenge, name))
                response = (
                    challenges.HTTP01Response(key_authorization=keyAuthorization)
                    if challenge == "http-01"
                    else _TLSALPNResponse(key_authorization=keyAuthorization)
                )
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
            orderr = _pollAuthorizations(acme, orderr, deadline, checkpoint)
            checkpoint()
            orderr = acme.finalize_order(orderr, deadline)
        finally:
            for kind, name in published:
                withdraw(kind, name)
        fullchain = orderr.fullchain_pem
        if not fullchain:
            raise ACMEError("the CA sent no certificate")
        return str(fullchain).encode("ascii")


def _pollAuthorizations(
    acme: Any,
    orderr: Any,
    deadline: datetime.datetime,
    checkpoint: Callable[[], None],
) -> Any:
    """
    The library's C{poll_authorizations}, in rounds of L{POLL_WINDOW}
    seconds with C{checkpoint} between them, until C{deadline}.
    """
    from acme import errors

    window = datetime.timedelta(seconds=POLL_WINDOW)
    while True:
        checkpoint()
        roundEnd = min(datetime.datetime.now() + window, deadline)
        try:
            return acme.poll_authorizations(orderr, roundEnd)
        except errors.TimeoutError:
            if datetime.datetime.now() >= deadline:
                raise


def _responseClass() -> Any:
    from acme import challenges

    class TLSALPNResponse(challenges.KeyAuthorizationChallengeResponse):
        """
        The answer to a tls-alpn-01 challenge: C{{}} on the wire, like any
        key authorization challenge's.
        """

        typ = "tls-alpn-01"

    return TLSALPNResponse


class _LazyResponse:
    _made: Any = None

    def __call__(self, **kwargs: Any) -> Any:
        if self._made is None:
            self._made = _responseClass()
        return self._made(**kwargs)


_TLSALPNResponse = _LazyResponse()
