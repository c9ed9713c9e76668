"""What a holder does with an incoming study request, and whom it answers prior-study queries (pure).

The holder's node.toml lists rules ([[request_policy]]); the first rule matching the request decides:

    [[request_policy]]
    from = ["RGT", "RJ1"]      # requesting organisations (org codes; "*" for any certified org)
    priority = ["urgent", "stat"]   # any of these (empty or absent: any priority)
    purpose = ["care"]          # any of these (empty or absent: any purpose)
    action = "auto-approve"     # auto-approve | queue | refuse

The priority and purpose are the requester's claims (its node signs them; nobody checks them): a rule is
trust in the organisations it names, so a rule naming "*" may not auto-approve (refused at config load), and
every auto-approval is audited (110104) with the claimed priority and purpose and the rule's index. A request
naming no NHS number (only a holder-local patient ID) is never auto-approved: a person checks who it is.
No rule matching: "queue" (a PACS-team user decides). "auto-approve" shares every local study matching the
request (patient, date range, modality) at once; "refuse" declines it with the policy as the reason.
The directory has no groups of organisations: a network (a stroke network, say) is the list of its
members' codes.

Prior-study queries ([prior_query] allow = [...]) are answered only to the listed orgs; default nobody.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from protocol.manifest import Priority, Purpose
from protocol.study_request import StudyRequest

ANY_ORG = "*"


class PolicyAction(str, Enum):
    AUTO_APPROVE = "auto-approve"
    QUEUE = "queue"
    REFUSE = "refuse"


@dataclass(frozen=True)
class RequestRule:
    orgs: frozenset[str]
    action: PolicyAction
    priorities: frozenset[Priority] = field(default_factory=frozenset)
    purposes: frozenset[Purpose] = field(default_factory=frozenset)

    def matches(self, request: StudyRequest) -> bool:
        return ((ANY_ORG in self.orgs or request.requester_org in self.orgs)
                and (not self.priorities or request.priority in self.priorities)
                and (not self.purposes or request.purpose in self.purposes))


def request_action(rules: Iterable[RequestRule], request: StudyRequest) -> tuple[PolicyAction, int | None]:
    """The action for a (verified) request, and the index of the rule that chose it (None: the default)."""
    for i, rule in enumerate(rules):
        if rule.matches(request):
            return rule.action, i
    return PolicyAction.QUEUE, None


def prior_query_allowed(allow: Iterable[str], org: str) -> bool:
    """Whether `org` may ask this node which studies it holds for a patient (default: nobody)."""
    allowed = frozenset(allow)
    return ANY_ORG in allowed or org in allowed
