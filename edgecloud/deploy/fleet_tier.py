"""Kubernetes objects for the fleet server and its PostgreSQL database."""

from __future__ import annotations

from edgecloud.deploy.values import Values
from edgecloud.deploy.workloads import (
    Obj,
    container,
    container_security,
    deployment,
    labels,
    meta,
    name,
    pod_disruption_budget,
    pod_spec,
    probe,
    resources,
    scrape_annotations,
    selector,
    service,
    tracing_env,
)

TLS_DIR = "/etc/edgecloud/fleet-tls"


def fleet_objects(values: Values) -> list[Obj]:
    f = values.fleet
    if not f.enabled:
        return []
    access = f.repo_access_mode if f.replicas > 1 else "ReadWriteOnce"
    pvc: Obj = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(values, "fleet", "-repo"),
        "spec": {"accessModes": [access],
                 "resources": {"requests": {"storage": f.repo_storage}}},
    }
    env = [
        {"name": "EDGECLOUD_FLEET_DB", "valueFrom": {"secretKeyRef": {
            "name": f.database.url_secret, "key": f.database.url_key}}},
        *tracing_env(values, "fleet"),
    ]
    # The database URL (with its password) reaches the process through the environment
    # only: never as an argument, where `ps` and /proc/PID/cmdline show it.
    args = ["fleet", "serve", "--host", "0.0.0.0", "--port", str(f.port),
            "--repo", "/data/repo", "--db-env", "EDGECLOUD_FLEET_DB"]
    m = f.mirror
    if m.url:
        args += ["--mirror", m.url, "--timestamp-max-age", str(m.timestamp_max_age_s)]
        if m.endpoint_url:
            args += ["--mirror-endpoint-url", m.endpoint_url]
    if f.poll_interval_s is not None:
        args += ["--poll-interval", f"{f.poll_interval_s:g}"]
    env.append({"name": "EDGECLOUD_FLEET_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": f.operator_token_secret, "key": "token"}}})
    args += ["--operator-token-env", "EDGECLOUD_FLEET_TOKEN"]
    if f.tls_secret:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
    else:
        args += ["--allow-plain-http"]  # in-cluster; the Ingress ends TLS
    if f.keys_secret:
        args += ["--keys-dir", "/etc/edgecloud/fleet-keys"]
    ready, live = probe("/healthz", "http", 5, 2), probe("/healthz", "http", 10, 3)
    if f.tls_secret:
        for p in (ready, live):
            p["httpGet"]["scheme"] = "HTTPS"
    main = container(
        f.image, "fleet", args, f.port, env=env, resources=resources(f.resources),
        readinessProbe=ready, livenessProbe=live,
    )
    main["volumeMounts"].append({"name": "repo", "mountPath": "/data"})
    if m.credentials_secret:
        main["envFrom"] = [{"secretRef": {"name": m.credentials_secret}}]
    volumes: list[Obj] = [
        {"name": "repo", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}
    ]
    if f.keys_secret:
        main["volumeMounts"].append(
            {"name": "keys", "mountPath": "/etc/edgecloud/fleet-keys", "readOnly": True})
        volumes.append({"name": "keys", "secret": {"secretName": f.keys_secret,
                                                   "defaultMode": 0o400}})
    if f.tls_secret:
        main["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": f.tls_secret,
                                                  "defaultMode": 0o400}})
    annotations = {
        **scrape_annotations(f.port),
        # for readers of the manifest: who runs the rollout controller
        "edgecloud.io/controller-lease": "postgresql-advisory-lock",
    }
    dep = deployment(values, "fleet", f.replicas, pod_spec([main], volumes), annotations)
    objs = [pvc, dep, service(values, "fleet", f.port)]
    if f.replicas > 1:
        # Stateless replicas over PostgreSQL: roll one at a time, keep the rest serving.
        dep["spec"]["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1},
        }
        objs.append(pod_disruption_budget(values, "fleet", f.pdb_max_unavailable))
    else:
        # One pod: the only writer of a ReadWriteOnce repository volume.
        dep["spec"]["strategy"] = {"type": "Recreate"}
    return objs


def postgres_objects(values: Values) -> list[Obj]:
    p = values.postgres
    if not (p.enabled and values.fleet.enabled):
        return []
    uid = 70  # the postgres user of the official alpine image
    main: Obj = {
        "name": "postgres",
        "image": p.image.ref,
        "imagePullPolicy": p.image.pull_policy,
        "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
        "envFrom": [{"secretRef": {"name": p.secret}}],
        "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
        "resources": resources(p.resources),
        "securityContext": {**container_security(uid), "readOnlyRootFilesystem": False},
        "readinessProbe": {"exec": {"command": ["sh", "-c", 'pg_isready -U "$POSTGRES_USER"']},
                           "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "postgres"}, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(values, "postgres"),
        "spec": {
            "serviceName": name(values, "postgres"),
            "replicas": 1,
            "selector": {"matchLabels": selector(values, "postgres")},
            "template": {
                "metadata": {"labels": labels(values, "postgres")},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "fsGroup": uid},
                    "automountServiceAccountToken": False,
                    "containers": [main],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": p.storage}}},
            }],
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(values, "postgres"),
        "spec": {
            "clusterIP": "None",
            "selector": selector(values, "postgres"),
            "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}],
        },
    }
    return [sts, svc]
