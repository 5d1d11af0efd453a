#!/usr/bin/env python3
"""End-to-end client for a running tollgate server, written the way another
team's backend would use it.

It generates Python stubs from the project's .proto files with grpcio-tools,
then drives the tollgate.v1 Plans, Billing (tenants and usage), Keys and Verify
services over an insecure channel, every call carrying
`authorization: Bearer <token>`: the admin token for everything but Verify,
which is called with the verify-scope token as an API gateway would.

Usage:
    python e2e_client.py --target 127.0.0.1:PORT --admin-token TOKEN \
        --verify-token TOKEN2 --proto-dir PATH [--timeout 10]

On success the last line printed is `python e2e: N checks passed` and the exit
code is 0. The first failed check prints a message naming it and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import pathlib
import secrets
import sys
import tempfile

try:
    import grpc
    from google.protobuf import duration_pb2, field_mask_pb2
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from grpc_tools import protoc
except ImportError as err:  # pragma: no cover - environment problem
    sys.exit(f"python e2e: FAILED: missing dependency ({err}); "
             "run `pip install -r tests/python/requirements.txt`")

BASE58 = set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
MAX_PAGES = 10_000  # bound on any paging loop, so a bad token cannot spin forever


class CheckFailed(Exception):
    """A check did not hold; the message names it."""


def brief(value) -> str:
    """A value on one line, for failure messages."""
    return " ".join(str(value).split()) or "<empty>"


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def generate_stubs(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> dict:
    """Compiles tollgate/v1/*.proto into out_dir and imports the modules.

    Returns {"plans": (pb2, pb2_grpc), "billing": ..., "keys": ..., "verify": ...}.
    """
    proto_dir = proto_dir.resolve()
    protos = sorted(proto_dir.glob("tollgate/v1/*.proto"))
    if not protos:
        raise CheckFailed(f"generate stubs: no .proto files in {proto_dir}/tollgate/v1")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main([
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ])
    if status != 0:
        raise CheckFailed(f"generate stubs: protoc exited with {status} (its errors are above)")
    for package in (out_dir / "tollgate", out_dir / "tollgate" / "v1"):
        (package / "__init__.py").touch()
    sys.path.insert(0, str(out_dir))
    modules = {}
    for name in ("plans", "billing", "keys", "verify"):
        try:
            modules[name] = (importlib.import_module(f"tollgate.v1.{name}_pb2"),
                             importlib.import_module(f"tollgate.v1.{name}_pb2_grpc"))
        except ImportError as err:
            raise CheckFailed(f"import stubs: tollgate.v1.{name}: {err}") from None
    return modules


class E2E:
    def __init__(self, stubs: dict, channel: grpc.Channel, admin_token: str,
                 verify_token: str, timeout: float):
        self.P, plans_grpc = stubs["plans"]
        self.B, billing_grpc = stubs["billing"]
        self.K, keys_grpc = stubs["keys"]
        self.V, verify_grpc = stubs["verify"]
        self.plans = plans_grpc.PlansStub(channel)
        self.billing = billing_grpc.BillingStub(channel)
        self.keys = keys_grpc.KeysStub(channel)
        self.verifier = verify_grpc.VerifyStub(channel)
        self.admin = bearer(admin_token)
        self.verify = bearer(verify_token)
        self.timeout = timeout
        self.suffix = secrets.token_hex(4)
        self.passed = 0

    # --- helpers ---------------------------------------------------------

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        if not ok:
            raise CheckFailed(f"{name}: {detail}" if detail else name)
        self.passed += 1

    def call(self, name: str, method, request, metadata=None):
        """An RPC that must succeed; uses the admin token unless told otherwise."""
        try:
            return method(request, metadata=self.admin if metadata is None else metadata,
                          timeout=self.timeout)
        except grpc.RpcError as err:
            raise CheckFailed(
                f"{name}: RPC failed with {err.code().name}: {err.details()}") from None

    def expect_code(self, name: str, code: grpc.StatusCode, method, request, metadata=None):
        """An RPC that must fail with `code`; returns the error (also a grpc.Call)."""
        try:
            method(request, metadata=self.admin if metadata is None else metadata,
                   timeout=self.timeout)
        except grpc.RpcError as err:
            self.check(name, err.code() == code,
                       f"expected {code.name}, got {err.code().name}: {err.details()}")
            return err
        raise CheckFailed(f"{name}: expected {code.name}, but the call succeeded")

    def new_plan(self, slug: str, display_name: str):
        P = self.P
        return P.Plan(
            slug=slug,
            display_name=display_name,
            price=P.Price(amount_minor=4900, currency="USD"),
            billing_interval=P.BILLING_INTERVAL_MONTH,
            trial_days=0,
            rate_limit=P.RateLimit(requests_per_minute=600, burst=20),
            quotas=[P.Quota(resource="chat_requests", included_units=1000,
                            overage_policy=P.OVERAGE_POLICY_BILLED,
                            overage_unit_price_micros=500)],
            features=["model:gpt-4o"],
            quota_reset=P.QuotaReset(calendar_month=P.QuotaReset.CalendarMonth(day=1)),
        )

    def check_secret(self, name: str, secret: str, key, env_prefix: str) -> None:
        self.check(f"{name}: secret starts with {env_prefix}", secret.startswith(env_prefix),
                   f"got secret starting {secret[:12]!r}")
        self.check(f"{name}: secret length >= {len(env_prefix) + 43}",
                   len(secret) >= len(env_prefix) + 43, f"got length {len(secret)}")
        self.check(f"{name}: secret body is base58",
                   set(secret[len(env_prefix):]) <= BASE58, f"got {secret[len(env_prefix):]!r}")
        self.check(f"{name}: key.prefix is a proper prefix of the secret",
                   bool(key.prefix) and len(key.prefix) < len(secret)
                   and secret.startswith(key.prefix),
                   f"prefix {key.prefix!r}, secret starts {secret[:len(key.prefix) or 12]!r}")

    # --- checks ----------------------------------------------------------

    def run(self) -> int:
        pro = self.plan_checks()
        tenant = self.tenant_checks(pro)
        self.key_checks(tenant)
        self.auth_checks(tenant)
        metered = self.verify_checks()
        self.usage_checks(metered)
        self.billing_checks(pro)
        return self.passed

    def plan_checks(self):
        P = self.P
        sent = self.new_plan(f"py-pro-{self.suffix}", "Py Pro")
        pro = self.call("CreatePlan", self.plans.CreatePlan, P.CreatePlanRequest(plan=sent))
        self.check("CreatePlan: id starts with plan_", pro.id.startswith("plan_"),
                   f"got id {pro.id!r}")
        for field in ("slug", "display_name", "price", "billing_interval", "trial_days",
                      "rate_limit", "quotas", "features", "quota_reset"):
            want, got = getattr(sent, field), getattr(pro, field)
            self.check(f"CreatePlan: {field} echoes back", want == got,
                       f"sent {brief(want)}, got {brief(got)}")
        self.check("CreatePlan: not archived", not pro.archived)
        self.check("CreatePlan: create_time set",
                   pro.HasField("create_time") and pro.create_time.seconds > 0,
                   f"got {brief(pro.create_time)}")

        by_slug = self.call("GetPlan by slug", self.plans.GetPlan, P.GetPlanRequest(slug=pro.slug))
        self.check("GetPlan by slug: same id", by_slug.id == pro.id,
                   f"want {pro.id!r}, got {by_slug.id!r}")
        by_id = self.call("GetPlan by id", self.plans.GetPlan, P.GetPlanRequest(id=pro.id))
        self.check("GetPlan by id: same slug", by_id.slug == pro.slug,
                   f"want {pro.slug!r}, got {by_id.slug!r}")

        self.expect_code("CreatePlan duplicate slug", grpc.StatusCode.ALREADY_EXISTS,
                         self.plans.CreatePlan, P.CreatePlanRequest(plan=sent))

        err = self.expect_code("CreatePlan bad slug", grpc.StatusCode.INVALID_ARGUMENT,
                               self.plans.CreatePlan,
                               P.CreatePlanRequest(plan=self.new_plan("Bad Slug", "Bad")))
        self.check_bad_request_field("CreatePlan bad slug", err, "slug")

        free = self.call("CreatePlan free", self.plans.CreatePlan, P.CreatePlanRequest(
            plan=self.new_plan(f"py-free-{self.suffix}", "Py Free")))
        self.check_list_plans_paging({pro.slug, free.slug})

        renamed = self.call("UpdatePlan display_name", self.plans.UpdatePlan, P.UpdatePlanRequest(
            plan=P.Plan(id=pro.id, display_name="Py Pro (renamed)"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))
        self.check("UpdatePlan: display_name changed", renamed.display_name == "Py Pro (renamed)",
                   f"got {renamed.display_name!r}")
        before, after = P.Plan(), P.Plan()
        before.CopyFrom(pro)
        after.CopyFrom(renamed)
        for plan in (before, after):
            plan.ClearField("display_name")
            plan.ClearField("update_time")
        self.check("UpdatePlan: nothing but display_name changed", before == after,
                   f"before {brief(before)}; after {brief(after)}")
        return pro

    def check_bad_request_field(self, name: str, err, field: str) -> None:
        try:
            status = rpc_status.from_call(err)
        except ValueError as bad:
            raise CheckFailed(f"{name}: inconsistent grpc-status-details-bin: {bad}") from None
        self.check(f"{name}: has rich status details", status is not None,
                   "no grpc-status-details-bin trailer")
        paths = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                paths += [v.field for v in bad_request.field_violations]
        self.check(f"{name}: BadRequest field violation names {field}",
                   any(field in path for path in paths),
                   f"BadRequest field paths {paths} (detail types "
                   f"{[d.type_url for d in status.details]})")

    def check_list_plans_paging(self, want_slugs: set) -> None:
        P = self.P
        ids, slugs, largest_page, token = [], set(), 0, ""
        for _ in range(MAX_PAGES):
            page = self.call("ListPlans page_size 1", self.plans.ListPlans,
                             P.ListPlansRequest(page_size=1, page_token=token))
            largest_page = max(largest_page, len(page.plans))
            ids += [p.id for p in page.plans]
            slugs |= {p.slug for p in page.plans}
            token = page.next_page_token
            if not token:
                break
        self.check("ListPlans: paging ends with an empty next_page_token", not token,
                   f"still a token after {MAX_PAGES} pages")
        self.check("ListPlans: pages hold at most page_size plans", largest_page <= 1,
                   f"a page held {largest_page}")
        self.check("ListPlans: no plan listed twice", len(ids) == len(set(ids)),
                   f"{len(ids) - len(set(ids))} duplicates among {len(ids)}")
        self.check("ListPlans: both new plans listed", want_slugs <= slugs,
                   f"missing {sorted(want_slugs - slugs)}")

    def tenant_checks(self, plan):
        B = self.B
        external_id = f"py-cust-{self.suffix}"
        sent = B.Tenant(external_id=external_id, email=f"py-{self.suffix}@example.com",
                        name="Py Customer", company="Py Co", plan_id=plan.id)
        tenant = self.call("CreateTenant", self.billing.CreateTenant,
                           B.CreateTenantRequest(tenant=sent))
        self.check("CreateTenant: id starts with ten_", tenant.id.startswith("ten_"),
                   f"got id {tenant.id!r}")
        self.check("CreateTenant: status ACTIVE on a plan without trial",
                   tenant.status == B.TENANT_STATUS_ACTIVE,
                   f"got {B.TenantStatus.Name(tenant.status)}")
        for field in ("external_id", "email", "name", "company", "plan_id"):
            want, got = getattr(sent, field), getattr(tenant, field)
            self.check(f"CreateTenant: {field} echoes back", want == got,
                       f"sent {want!r}, got {got!r}")

        found = self.call("GetTenant by external_id", self.billing.GetTenant,
                          B.GetTenantRequest(external_id=external_id))
        self.check("GetTenant by external_id: same id", found.id == tenant.id,
                   f"want {tenant.id!r}, got {found.id!r}")

        self.expect_code("CreateTenant duplicate external_id", grpc.StatusCode.ALREADY_EXISTS,
                         self.billing.CreateTenant, B.CreateTenantRequest(tenant=sent))
        self.expect_code("CreateTenant unknown plan", grpc.StatusCode.NOT_FOUND,
                         self.billing.CreateTenant, B.CreateTenantRequest(tenant=B.Tenant(
                             external_id=f"{external_id}-noplan", plan_id="plan_" + "0" * 32)))
        return tenant

    def key_checks(self, tenant) -> None:
        K = self.K
        created = self.call("CreateKey", self.keys.CreateKey, K.CreateKeyRequest(
            key=K.Key(tenant_id=tenant.id, name="py key", environment=K.KEY_ENVIRONMENT_TEST)))
        key, secret = created.key, created.secret
        self.check("CreateKey: id starts with key_", key.id.startswith("key_"),
                   f"got id {key.id!r}")
        self.check("CreateKey: tenant_id echoes back", key.tenant_id == tenant.id,
                   f"got {key.tenant_id!r}")
        self.check("CreateKey: status ACTIVE", key.status == K.KEY_STATUS_ACTIVE,
                   f"got {K.KeyStatus.Name(key.status)}")
        self.check_secret("CreateKey", secret, key, "tg_test_")

        self.check("Key message has no secret field",
                   "secret" not in [f.name for f in K.Key.DESCRIPTOR.fields])
        got = self.call("GetKey", self.keys.GetKey, K.GetKeyRequest(id=key.id))
        self.check("GetKey: same id", got.id == key.id, f"got {got.id!r}")
        self.check("GetKey: same prefix as CreateKey", got.prefix == key.prefix,
                   f"want {key.prefix!r}, got {got.prefix!r}")

        listed = self.call("ListKeys", self.keys.ListKeys,
                           K.ListKeysRequest(tenant_id=tenant.id, page_size=100))
        self.check("ListKeys: contains the new key", key.id in [k.id for k in listed.keys],
                   f"listed {[k.id for k in listed.keys]}")

        disabled = self.call("UpdateKey disabled", self.keys.UpdateKey, K.UpdateKeyRequest(
            key=K.Key(id=key.id, disabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["disabled"])))
        self.check("UpdateKey: disabled is true", disabled.disabled)
        self.check("UpdateKey: name untouched by the mask", disabled.name == "py key",
                   f"got {disabled.name!r}")

        rotated = self.call("RotateKey", self.keys.RotateKey, K.RotateKeyRequest(
            id=key.id, grace_period=duration_pb2.Duration(seconds=60)))
        self.check("RotateKey: same key id", rotated.key.id == key.id,
                   f"got {rotated.key.id!r}")
        self.check("RotateKey: new secret differs", rotated.secret != secret)
        self.check("RotateKey: prefix changed", rotated.key.prefix != key.prefix,
                   f"still {key.prefix!r}")
        self.check_secret("RotateKey", rotated.secret, rotated.key, "tg_test_")

        revoked = self.call("RevokeKey", self.keys.RevokeKey, K.RevokeKeyRequest(id=key.id))
        self.check("RevokeKey: status REVOKED", revoked.status == K.KEY_STATUS_REVOKED,
                   f"got {K.KeyStatus.Name(revoked.status)}")
        self.check("RevokeKey: revoke_time set",
                   revoked.HasField("revoke_time") and revoked.revoke_time.seconds > 0,
                   f"got {brief(revoked.revoke_time)}")
        self.expect_code("RotateKey on a revoked key", grpc.StatusCode.FAILED_PRECONDITION,
                         self.keys.RotateKey, K.RotateKeyRequest(id=key.id))

    def auth_checks(self, tenant) -> None:
        P, B, K = self.P, self.B, self.K
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        self.expect_code("Plans.ListPlans without metadata", unauthenticated,
                         self.plans.ListPlans, P.ListPlansRequest(), metadata=())
        self.expect_code("Billing.GetTenant without metadata", unauthenticated,
                         self.billing.GetTenant, B.GetTenantRequest(id=tenant.id), metadata=())
        self.expect_code("Keys.ListKeys without metadata", unauthenticated,
                         self.keys.ListKeys, K.ListKeysRequest(tenant_id=tenant.id), metadata=())
        self.expect_code("Plans.ListPlans with an unknown bearer token", unauthenticated,
                         self.plans.ListPlans, P.ListPlansRequest(),
                         metadata=bearer(f"not-a-token-{self.suffix}"))
        self.expect_code("Plans.ListPlans with the verify token", grpc.StatusCode.PERMISSION_DENIED,
                         self.plans.ListPlans, P.ListPlansRequest(), metadata=self.verify)

        # A live, active API key: its secret is for the tenant's clients, never
        # an admin credential.
        live = self.call("CreateKey live", self.keys.CreateKey, K.CreateKeyRequest(
            key=K.Key(tenant_id=tenant.id, name="py live key",
                      environment=K.KEY_ENVIRONMENT_LIVE)))
        self.check_secret("CreateKey live", live.secret, live.key, "tg_live_")
        self.expect_code("Plans.ListPlans with an API key secret as bearer", unauthenticated,
                         self.plans.ListPlans, P.ListPlansRequest(), metadata=bearer(live.secret))

    def verify_call(self, name: str, secret: str, *, units=None, resource="chat_requests",
                    features=("model:gpt-4o",), metadata=None, view=None):
        """One Verify.Verify call with the verify-scope token; must not be a gRPC error."""
        V = self.V
        request = V.VerifyRequest(key=secret, resource=resource, required_features=list(features))
        if units is not None:
            request.units = units
        if view is not None:
            request.view = V.VerifyView.Value(view)
        return self.call(name, self.verifier.Verify, request,
                         metadata=self.verify if metadata is None else metadata)

    def check_verdict(self, name: str, answer, code: str, http_status: int) -> None:
        V = self.V
        self.check(f"{name}: code {code}", answer.code == V.VerifyCode.Value(code),
                   f"got {V.VerifyCode.Name(answer.code)} (http_status {answer.http_status})")
        self.check(f"{name}: valid is {code == 'VALID'}", answer.valid == (code == "VALID"),
                   f"got valid={answer.valid}")
        self.check(f"{name}: http_status {http_status}", answer.http_status == http_status,
                   f"got {answer.http_status}")

    def check_quota_used(self, name: str, answer, used: int) -> None:
        self.check(f"{name}: quota.used == {used}",
                   answer.HasField("quota") and answer.quota.used == used,
                   f"got quota {brief(answer.quota) if answer.HasField('quota') else 'unset'}")

    def verify_checks(self):
        """Verify.Verify on a hard-capped plan, the way an API gateway calls it.

        Returns the tenant, whose chat_requests quota is used up (3 of 3)."""
        P, B, K = self.P, self.B, self.K
        plan = self.new_plan(f"py-capped-{self.suffix}", "Py Capped")
        plan.rate_limit.CopyFrom(P.RateLimit(requests_per_minute=600, burst=5))
        del plan.quotas[:]
        plan.quotas.add(resource="chat_requests", included_units=3,
                        overage_policy=P.OVERAGE_POLICY_HARD_CAP)
        plan = self.call("CreatePlan hard cap", self.plans.CreatePlan,
                         P.CreatePlanRequest(plan=plan))
        tenant = self.call("CreateTenant on the hard-capped plan", self.billing.CreateTenant,
                           B.CreateTenantRequest(tenant=B.Tenant(
                               external_id=f"py-verify-{self.suffix}", plan_id=plan.id)))
        created = self.call("CreateKey for Verify", self.keys.CreateKey, K.CreateKeyRequest(
            key=K.Key(tenant_id=tenant.id, name="py verify key",
                      environment=K.KEY_ENVIRONMENT_LIVE)))
        key, secret = created.key, created.secret

        first = self.verify_call("Verify", secret, view="VERIFY_VIEW_FULL")
        self.check_verdict("Verify", first, "VALID", 200)
        for field, want in (("key_id", key.id), ("tenant_id", tenant.id),
                            ("plan_slug", plan.slug)):
            got = getattr(first, field)
            self.check(f"Verify: {field} matches the created one", got == want,
                       f"want {want!r}, got {got!r}")
        self.check_quota_used("Verify", first, 1)
        self.check("Verify: quota.remaining == 2", first.quota.remaining == 2,
                   f"got {first.quota.remaining}")
        headers = dict(first.headers)
        for header, want in (("X-RateLimit-Limit", "5"), ("X-Quota-Limit", "3"),
                             ("X-Quota-Remaining", "2")):
            self.check(f"Verify: header {header} is {want!r}", headers.get(header) == want,
                       f"got {headers.get(header)!r}; headers {headers}")
        for header in ("RateLimit", "RateLimit-Policy"):
            self.check(f"Verify: header {header} present", bool(headers.get(header)),
                       f"headers {headers}")

        dry = self.verify_call("Verify units=0", secret, units=0)
        self.check_verdict("Verify units=0", dry, "VALID", 200)
        self.check_quota_used("Verify units=0 consumes nothing", dry, 1)
        self.check("Verify, BASIC view by default: no headers, no features",
                   not dry.headers and not dry.features,
                   f"headers {dict(dry.headers)}, features {list(dry.features)}")

        denied = self.verify_call("Verify feature not in plan", secret,
                                  features=["model:gpt-4o", "model:o1-pro"])
        self.check_verdict("Verify feature not in plan", denied, "FEATURE_NOT_IN_PLAN", 403)
        self.check_quota_used("Verify after a feature denial: nothing consumed",
                              self.verify_call("Verify units=0 after a feature denial",
                                               secret, units=0), 1)

        for used in (2, 3):
            answer = self.verify_call(f"Verify call {used} of 3 included", secret)
            self.check_verdict(f"Verify call {used} of 3 included", answer, "VALID", 200)
            self.check_quota_used(f"Verify call {used} of 3 included", answer, used)
        self.check("Verify call 3 of 3 included: quota.remaining == 0",
                   answer.quota.remaining == 0, f"got {answer.quota.remaining}")

        over = self.verify_call("Verify past the hard cap", secret, view="VERIFY_VIEW_FULL")
        self.check_verdict("Verify past the hard cap", over, "QUOTA_EXCEEDED", 429)
        self.check("Verify past the hard cap: header Retry-After present",
                   "Retry-After" in over.headers, f"headers {dict(over.headers)}")

        unknown = "tg_live_" + "".join(secrets.choice(sorted(BASE58)) for _ in range(43))
        missing = self.verify_call("Verify unknown secret", unknown)
        self.check_verdict("Verify unknown secret", missing, "KEY_NOT_FOUND", 401)

        err = self.expect_code("Verify units=-1", grpc.StatusCode.INVALID_ARGUMENT,
                               self.verifier.Verify,
                               self.V.VerifyRequest(key=secret, resource="chat_requests",
                                                    units=-1),
                               metadata=self.verify)
        self.check_bad_request_field("Verify units=-1", err, "units")

        self.expect_code("Verify.Verify without metadata", grpc.StatusCode.UNAUTHENTICATED,
                         self.verifier.Verify, self.V.VerifyRequest(key=secret), metadata=())

        self.call("RevokeKey before Verify", self.keys.RevokeKey, K.RevokeKeyRequest(id=key.id))
        revoked = self.verify_call("Verify revoked key", secret)
        self.check_verdict("Verify revoked key", revoked, "KEY_REVOKED", 401)
        return tenant

    def usage_checks(self, tenant) -> None:
        B = self.B
        usage = self.call("GetUsage", self.billing.GetUsage,
                          B.GetUsageRequest(tenant_id=tenant.id))
        self.check("GetUsage: tenant_id echoes back", usage.tenant_id == tenant.id,
                   f"got {usage.tenant_id!r}")
        self.check("GetUsage: period_start before period_end",
                   usage.HasField("period_start") and usage.HasField("period_end")
                   and usage.period_start.ToNanoseconds() < usage.period_end.ToNanoseconds(),
                   f"got {brief(usage.period_start)} .. {brief(usage.period_end)}")
        resources = [r.resource for r in usage.resources]
        self.check("GetUsage: exactly one resource, chat_requests",
                   resources == ["chat_requests"], f"got {resources}")
        chat = usage.resources[0]
        for field, want in (("used", 3), ("included", 3), ("overage", 0)):
            got = getattr(chat, field)
            self.check(f"GetUsage: chat_requests {field} == {want}", got == want,
                       f"got {got} ({brief(chat)})")

        self.expect_code("Billing.GetUsage with the verify token",
                         grpc.StatusCode.PERMISSION_DENIED, self.billing.GetUsage,
                         B.GetUsageRequest(tenant_id=tenant.id), metadata=self.verify)
        err = self.expect_code("GetUsage malformed tenant_id", grpc.StatusCode.INVALID_ARGUMENT,
                               self.billing.GetUsage,
                               B.GetUsageRequest(tenant_id="not-a-tenant-id"))
        self.check_bad_request_field("GetUsage malformed tenant_id", err, "tenant_id")

    def billing_checks(self, plan) -> None:
        B, V = self.B, self.V
        signed = self.call("Signup", self.billing.Signup, B.SignupRequest(
            email=f"py-{self.suffix}@example.test", company="Py Corp", plan_slug=plan.slug))
        self.check("Signup: a tenant and its key", signed.tenant.id.startswith("ten_")
                   and signed.key.tenant_id == signed.tenant.id, f"got {brief(signed)}")
        tenant_id = signed.tenant.id
        answer = self.call("Verify the signup's secret", self.verifier.Verify,
                           V.VerifyRequest(key=signed.secret, resource="chat_requests"),
                           metadata=self.verify)
        self.check("Signup then Verify: VALID", answer.code == V.VALID, f"got {brief(answer)}")

        grant = self.call("GrantCredits", self.billing.GrantCredits, B.GrantCreditsRequest(
            tenant_id=tenant_id, credit_type="gpt-4", amount=10, idempotency_key="py-grant"))
        self.check("GrantCredits: balance_after 10", grant.balance_after == 10, brief(grant))
        err = self.expect_code("DebitCredits over the balance", grpc.StatusCode.FAILED_PRECONDITION,
                               self.billing.DebitCredits, B.DebitCreditsRequest(
                                   tenant_id=tenant_id, credit_type="gpt-4", amount=11,
                                   idempotency_key="py-big"))
        status = rpc_status.from_call(err)
        reasons = []
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reasons.append(info.reason)
        self.check("DebitCredits over the balance: ErrorInfo reason INSUFFICIENT_CREDITS",
                   reasons == ["INSUFFICIENT_CREDITS"], f"got {reasons}")
        debit = B.DebitCreditsRequest(tenant_id=tenant_id, credit_type="gpt-4", amount=4,
                                      idempotency_key="py-job")
        first = self.call("DebitCredits", self.billing.DebitCredits, debit)
        again = self.call("DebitCredits retried", self.billing.DebitCredits, debit)
        self.check("DebitCredits retried: the first entry, replayed",
                   again.id == first.id and again.replayed and not first.replayed,
                   f"{brief(first)} / {brief(again)}")
        balances = self.call("GetBalances", self.billing.GetBalances,
                             B.GetBalancesRequest(tenant_id=tenant_id))
        self.check("GetBalances: 6 left", [(b.credit_type, b.balance) for b in balances.balances]
                   == [("gpt-4", 6)], brief(balances))
        short = self.call("Verify needing 7 credits", self.verifier.Verify, V.VerifyRequest(
            key=signed.secret, resource="chat_requests", credit_type="gpt-4", credit_units=7),
            metadata=self.verify)
        self.check("Verify needing 7 credits: INSUFFICIENT_CREDITS, HTTP 402",
                   short.code == V.INSUFFICIENT_CREDITS and short.http_status == 402,
                   brief(short))

        applied = self.call("ApplySubscription for an unmapped product",
                            self.billing.ApplySubscription, B.ApplySubscriptionRequest(
                                provider="polar", subscription_id=f"sub_py_{self.suffix}",
                                customer=B.Customer(external_id=f"cus_py_{self.suffix}"),
                                product_id=f"prod_py_{self.suffix}",
                                status=B.SUBSCRIPTION_STATUS_ACTIVE,
                                modified_at=signed.tenant.create_time))
        self.check("ApplySubscription for an unmapped product: PENDING",
                   applied.outcome == B.APPLY_OUTCOME_PENDING, brief(applied))
        err = self.expect_code("GenerateInvoice with a bad period",
                               grpc.StatusCode.INVALID_ARGUMENT, self.billing.GenerateInvoice,
                               B.GenerateInvoiceRequest(tenant_id=tenant_id, period="2026-13"))
        self.check_bad_request_field("GenerateInvoice with a bad period", err, "period")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of a running tollgate")
    parser.add_argument("--admin-token", required=True, help="token with the admin scope")
    parser.add_argument("--verify-token", required=True, help="token with the verify scope only")
    parser.add_argument("--proto-dir", required=True, help="directory holding tollgate/v1/*.proto")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for connecting and for each call (default 10)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tollgate-py-stubs-") as out_dir:
        try:
            stubs = generate_stubs(pathlib.Path(args.proto_dir), pathlib.Path(out_dir))
        except CheckFailed as err:
            print(f"python e2e: FAILED: {err}", file=sys.stderr)
            return 1
        with grpc.insecure_channel(args.target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=args.timeout)
            except grpc.FutureTimeoutError:
                print(f"python e2e: FAILED: connect: no gRPC server reachable at {args.target} "
                      f"within {args.timeout:g}s (is tollgate running?)", file=sys.stderr)
                return 1
            suite = E2E(stubs, channel, args.admin_token, args.verify_token, args.timeout)
            try:
                passed = suite.run()
            except CheckFailed as err:
                print(f"python e2e: FAILED (after {suite.passed} passed checks): {err}",
                      file=sys.stderr)
                return 1
    print(f"python e2e: {passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
