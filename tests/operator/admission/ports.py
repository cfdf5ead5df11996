"""The API server's rules for the ports of built-in kinds the operator renders or KubeRay
builds from its templates: a container's ports (the head pod's `live-page`) and a Service's.

The emulator stores built-in kinds as sent (kube_emulator.py); these pure functions let the
tests hold every rendered port to what a real API server would accept, with its messages.
Derived from kubernetes pkg/apis/core/validation/validation.go and apimachinery
pkg/util/validation/validation.go (named next to each rule); `objects.FieldError` carries them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from admission.objects import FieldError

PROTOCOLS = ("SCTP", "TCP", "UDP")  # validation.go: supportedPortProtocols
_PORT_NAME_CHARSET = re.compile(r"^[-a-z0-9]+$")
_PORT_NAME_LETTER = re.compile(r"[a-z]")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# apimachinery validation.go: IsDNS1123Label's regexError(dns1123LabelErrMsg, ...)
DNS1123_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def port_name_errors(name: str) -> list[str]:
    """apimachinery validation.go: IsValidPortName (an IANA_SVC_NAME): at most 15
    characters of [-a-z0-9], a letter among them, no `--`, no hyphen at either end."""
    errs = []
    if len(name) > 15:
        errs.append("must be no more than 15 characters")  # MaxLenError(15)
    if not _PORT_NAME_CHARSET.match(name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_LETTER.search(name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def port_number_errors(port: Any) -> list[str]:
    """apimachinery validation.go: IsValidPortNum."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return ["must be between 1 and 65535, inclusive"]  # InclusiveRangeError(1, 65535)
    return []


def container_port_errors(ports: Iterable[Mapping[str, Any]], path: str) -> list[FieldError]:
    """validation.go: validateContainerPorts: a name, when given, is a port name unique in the
    container; containerPort required and a port number; protocol one of the supported ones
    (the defaulting of a missing protocol to TCP, pkg/apis/core/v1/defaults.go
    SetDefaults_ContainerPort, runs first, so a missing one is accepted)."""
    errs: list[FieldError] = []
    seen: set[str] = set()
    for i, port in enumerate(ports):
        at = f"{path}[{i}]"
        name = port.get("name") or ""
        if name:
            msgs = port_name_errors(name)
            errs += [FieldError("Invalid value", f"{at}.name", name, m) for m in msgs]
            if not msgs and name in seen:
                errs.append(
                    FieldError("Duplicate value", f"{at}.name", name, "", "FieldValueDuplicate")
                )
            seen.add(name)
        number = port.get("containerPort")
        if not number:
            errs.append(
                FieldError("Required value", f"{at}.containerPort", reason="FieldValueRequired")
            )
        else:
            field = f"{at}.containerPort"
            errs += [
                FieldError("Invalid value", field, number, m) for m in port_number_errors(number)
            ]
        errs += protocol_errors(port, at)
    return errs


def service_port_errors(ports: list[Mapping[str, Any]], path: str) -> list[FieldError]:
    """validation.go: validateServicePort for each port (ValidateService: a name is required
    when there is more than one port): the name a DNS-1123 label unique in the Service, port a
    port number, protocol supported (defaulted to TCP), targetPort a number or a port name
    (ValidatePortNumOrName; 0 or absent defaults to `port`)."""
    errs: list[FieldError] = []
    seen: set[str] = set()
    for i, port in enumerate(ports):
        at = f"{path}[{i}]"
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errs.append(FieldError("Required value", f"{at}.name", reason="FieldValueRequired"))
        elif name:
            if len(name) > 63 or not _DNS1123_LABEL.match(name):  # ValidateDNS1123Label
                errs.append(FieldError("Invalid value", f"{at}.name", name, DNS1123_LABEL_MESSAGE))
            if name in seen:
                errs.append(
                    FieldError("Duplicate value", f"{at}.name", name, "", "FieldValueDuplicate")
                )
            seen.add(name)
        number = port.get("port")
        errs += [
            FieldError("Invalid value", f"{at}.port", number, m) for m in port_number_errors(number)
        ]
        errs += protocol_errors(port, at)
        target = port.get("targetPort")
        if isinstance(target, str):
            msgs = port_name_errors(target)
        elif target:
            msgs = port_number_errors(target)
        else:
            msgs = []
        errs += [FieldError("Invalid value", f"{at}.targetPort", target, m) for m in msgs]
    return errs


def protocol_errors(port: dict, at: str) -> list[FieldError]:
    """A container's or a Service's port protocol (validation.go: the same supported set for
    both, TCP when unset)."""
    protocol = port.get("protocol", "TCP")
    if protocol in PROTOCOLS:
        return []
    detail = "supported values: " + ", ".join(f'"{p}"' for p in PROTOCOLS)
    return [
        FieldError(
            "Unsupported value", f"{at}.protocol", protocol, detail, "FieldValueNotSupported"
        )
    ]
