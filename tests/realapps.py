"""Apps and an OpenID provider nobody here wrote, made and started by the tests at run time on
loopback (docs/real-apps.md): a stock Django project (`django-admin startproject`, its admin,
sqlite), a Flask app with Flask-WTF's CSRF protection and Flask-Login, and a second OpenID
provider — a Django project with django-oauth-toolkit's OIDC provider. Every process is stopped
by its context manager, whatever happens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.testing.chserver import free_port
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
FLASK_APP = ROOT / "tests" / "web" / "apps" / "notes_flask.py"


@contextmanager
def running(
    cmd: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` in its own process group until ``ready_url`` answers; the group is stopped on
    exit (SIGTERM, then SIGKILL), whatever happens."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=1):
                        break
                except urllib.error.HTTPError:
                    break  # it answers
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"{cmd[0]} did not start:\n" + log.read_text(errors="replace")
                        ) from None
                    time.sleep(0.1)
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _run(cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> None:
    done = subprocess.run(
        list(cmd),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


# -- a stock Django project with its admin ----------------------------------------------------


@dataclass
class DjangoSite:
    url: str
    root: Path
    admin_user: str = "admin"
    admin_password: str = "correct horse battery staple"


def _startproject(tmp: Path, name: str) -> Path:
    root = tmp / name
    root.mkdir(parents=True)
    _run([str(BIN / "django-admin"), "startproject", name, str(root)], cwd=tmp)
    return root


@contextmanager
def django_site(tmp: Path) -> Iterator[DjangoSite]:
    """`django-admin startproject staffsite`, its generated settings.py and urls.py untouched.
    The admin needs a model with a file to upload: a `documents` app (a model, its admin
    registration) is added by a settings module that imports the generated one and appends that
    app and a MEDIA_ROOT — nothing about proxies, hosts, origins or CSRF."""
    root = _startproject(tmp, "staffsite")
    app = root / "documents"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(
        textwrap.dedent(
            """
            from django.db import models


            class Document(models.Model):
                title = models.CharField(max_length=200)
                attachment = models.FileField(upload_to="documents/")

                def __str__(self):
                    return self.title
            """
        )
    )
    (app / "admin.py").write_text(
        "from django.contrib import admin\n\nfrom .models import Document\n\n"
        "admin.site.register(Document)\n"
    )
    (root / "staffsite" / "with_documents.py").write_text(
        "from .settings import *  # noqa: F403 - the generated settings, unchanged\n\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "documents"]  # noqa: F405\n'
        'MEDIA_ROOT = BASE_DIR / "media"  # noqa: F405\n'
    )
    env = {"DJANGO_SETTINGS_MODULE": "staffsite.with_documents", "PYTHONPATH": str(root)}
    manage = [sys.executable, str(root / "manage.py")]
    _run([*manage, "makemigrations", "documents"], root, env)
    _run([*manage, "migrate", "--noinput"], root, env)
    site = DjangoSite(url="", root=root)
    _run(
        [
            *manage,
            "createsuperuser",
            "--noinput",
            "--username",
            site.admin_user,
            "--email",
            "admin@example.org",
        ],
        root,
        {**env, "DJANGO_SUPERUSER_PASSWORD": site.admin_password},
    )
    port = free_port()
    site.url = f"http://127.0.0.1:{port}"
    with running(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
        ready_url=site.url + "/admin/login/",
        log=tmp / "django.log",
        cwd=root,
        env=env,
    ):
        yield site


# -- a Flask app with Flask-WTF CSRF and Flask-Login -----------------------------------------


@contextmanager
def flask_notes(tmp: Path) -> Iterator[str]:
    """tests/web/apps/notes_flask.py under Werkzeug's server; its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    uploads = tmp / "flask-uploads"
    uploads.mkdir()
    with running(
        [sys.executable, str(FLASK_APP), str(port), str(uploads)],
        ready_url=url + "/login",
        log=tmp / "flask.log",
    ):
        yield url


# -- django-oauth-toolkit as a second OpenID provider ----------------------------------------


@dataclass
class DotProvider:
    """The same fields tests.oidc_provider.Provider has, for oidc_section()."""

    issuer: str
    client_id: str
    client_secret: str
    gateway_ports: list[int]
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)
    password: str = "provider password 1"

    def manage(self, *args: str) -> None:
        _run([sys.executable, str(self.root / "manage.py"), *args], self.root, self.env)

    def revoke_tokens(self, user: str) -> None:
        """The provider revokes every token it issued to ``user`` (an administrator's act)."""
        self.manage(
            "shell",
            "-c",
            "from oauth2_provider.models import RefreshToken, AccessToken\n"
            f"for t in RefreshToken.objects.filter(user__username={user!r}): t.revoke()\n"
            f"AccessToken.objects.filter(user__username={user!r}).delete()\n",
        )


@contextmanager
def dot_provider(
    tmp: Path,
    gateway_ports: list[int],
    *,
    users: Mapping[str, list[str]],
    end_session: bool = True,
) -> Iterator[DotProvider]:
    """A stock Django project with django-oauth-toolkit's OIDC provider on `localhost` (its
    cookies apart from gateways on 127.0.0.1, as another site's would be). Provider-side
    configuration only: an RSA key, OIDC on, http redirect URIs (loopback), the `roles` claim
    from the user's groups and `sub` as the username (a validator subclass, DOT's documented
    way), RP-initiated logout on or off, Django's LoginView as the login page; one confidential
    client; users with groups."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    root = _startproject(tmp, "idp")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    port = free_port()
    issuer = f"http://localhost:{port}/o"
    (root / "idp" / "roles.py").write_text(
        textwrap.dedent(
            """
            from oauth2_provider.oauth2_validators import OAuth2Validator


            class RolesValidator(OAuth2Validator):
                oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "roles": "openid"}

                def get_additional_claims(self, request):
                    user = request.user
                    return {"sub": user.username, "roles": [g.name for g in user.groups.all()]}
            """
        )
    )
    (root / "idp" / "with_oidc.py").write_text(
        "from .settings import *  # noqa: F403 - the generated settings, unchanged\n\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "oauth2_provider"]  # noqa: F405\n'
        'ROOT_URLCONF = "idp.with_oidc_urls"\n'
        'LOGIN_URL = "/accounts/login/"\n'
        "OAUTH2_PROVIDER = "
        + repr(
            {
                "OIDC_ENABLED": True,
                "OIDC_RSA_PRIVATE_KEY": pem,
                "PKCE_REQUIRED": True,
                "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
                "ALLOWED_SCHEMES": ["http", "https"],
                "SCOPES": {"openid": "OpenID Connect"},
                "OAUTH2_VALIDATOR_CLASS": "idp.roles.RolesValidator",
                "OIDC_RP_INITIATED_LOGOUT_ENABLED": end_session,
            }
        )
        + "\n"
    )
    (root / "idp" / "with_oidc_urls.py").write_text(
        textwrap.dedent(
            """
            from django.contrib.auth.views import LoginView
            from django.urls import include, path

            from .urls import urlpatterns as generated

            urlpatterns = [
                *generated,
                path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
                # Django's own login view, dressed in the admin's login template.
                path("accounts/login/", LoginView.as_view(template_name="admin/login.html")),
            ]
            """
        )
    )
    env = {"DJANGO_SETTINGS_MODULE": "idp.with_oidc", "PYTHONPATH": str(root)}
    origins = [f"http://127.0.0.1:{p}" for p in gateway_ports]
    secret = "dot-" + os.urandom(12).hex()
    provider = DotProvider(
        issuer=issuer,
        client_id="pd-gateway-dot",
        client_secret=secret,
        gateway_ports=list(gateway_ports),
        root=root,
        env=env,
        users={u: list(r) for u, r in users.items()},
    )
    provider.manage("migrate", "--noinput")
    setup = {
        "users": provider.users,
        "password": provider.password,
        "client_id": provider.client_id,
        "secret": secret,
        "redirects": " ".join(o + "/_pdgw/callback" for o in origins),
        "logouts": " ".join(o + "/_pdgw/logged-out" for o in origins),
    }
    provider.manage(
        "shell",
        "-c",
        textwrap.dedent(
            f"""
            import json
            from django.contrib.auth.models import Group, User
            from oauth2_provider.models import Application
            s = json.loads({json.dumps(json.dumps(setup))})
            for name, roles in s["users"].items():
                u = User.objects.create_user(name, password=s["password"])
                for r in roles:
                    u.groups.add(Group.objects.get_or_create(name=r)[0])
            Application.objects.create(
                name="pd-gateway", client_id=s["client_id"], client_secret=s["secret"],
                client_type="confidential", authorization_grant_type="authorization-code",
                redirect_uris=s["redirects"], post_logout_redirect_uris=s["logouts"],
                algorithm="RS256", skip_authorization=True,
            )
            """
        ),
    )
    with running(
        [sys.executable, str(root / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
        ready_url=issuer + "/.well-known/openid-configuration",
        log=tmp.parent / "dot.log",
        cwd=root,
        env=env,
    ):
        yield provider
