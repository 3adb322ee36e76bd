"""The policy admin service (trellisctl policy ...). Every method requires an admin certificate."""

from __future__ import annotations

from typing import Any

import grpc

from trellis.controller.api.boundary import caller_of
from trellis.controller.policy_admin import PolicyAdministration
from trellis.controller.service import Caller, ControllerService
from trellis.v1 import policy_pb2, policy_pb2_grpc

ServicerContext = grpc.aio.ServicerContext[Any, Any]


class PolicyAdminServicer(policy_pb2_grpc.PolicyAdminServicer):
    def __init__(self, service: ControllerService) -> None:
        self.service = service
        self.policies = PolicyAdministration(service)

    async def _admin(self, context: ServicerContext, action: str) -> Caller:
        caller = caller_of(context)
        await self.service.authenticate_admin(caller, action)
        return caller

    async def ApplyPolicy(
        self, request: policy_pb2.ApplyPolicyRequest, context: ServicerContext
    ) -> policy_pb2.ApplyPolicyResponse:
        caller = await self._admin(context, "policy.apply")
        return await self.policies.apply(
            caller,
            request.yaml,
            dry_run=request.dry_run,
            comment=request.comment,
            expected_version=request.expected_version or None,
        )

    async def RollbackPolicy(
        self, request: policy_pb2.RollbackPolicyRequest, context: ServicerContext
    ) -> policy_pb2.ApplyPolicyResponse:
        caller = await self._admin(context, "policy.rollback")
        return await self.policies.rollback(
            caller, request.version, dry_run=request.dry_run, comment=request.comment
        )

    async def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: ServicerContext
    ) -> policy_pb2.PolicyDocument:
        caller = await self._admin(context, "policy.show")
        return await self.policies.show(caller, request.version)

    async def ListPolicyVersions(
        self, request: policy_pb2.ListPolicyVersionsRequest, context: ServicerContext
    ) -> policy_pb2.ListPolicyVersionsResponse:
        caller = await self._admin(context, "policy.history")
        return await self.policies.history(caller, limit=request.limit, before=request.before_version)

    async def CheckPolicy(
        self, request: policy_pb2.CheckPolicyRequest, context: ServicerContext
    ) -> policy_pb2.CheckPolicyResponse:
        caller = await self._admin(context, "policy.check")
        return await self.policies.check(caller, request)
