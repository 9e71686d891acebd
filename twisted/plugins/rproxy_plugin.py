from twisted.application.service import ServiceMaker

TwistedRProxy = ServiceMaker(
    "twisted_rproxy",
    "twisted_rproxy.tap",
    "A reverse proxy built on Twisted.",
    "rproxy",
)
