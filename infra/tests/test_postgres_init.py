"""The production overlay's PostgreSQL init script, run for real.

infra/k8s/overlays/production/postgres.yaml mounts the ConfigMap
postgres-init at /docker-entrypoint-initdb.d. On an empty volume the
postgres image's entrypoint runs initdb, starts a server that listens on
its Unix socket only, and executes each executable *.sh file there (mode
0555: run, not sourced) as the server's OS user, with the container's
environment and psql on PATH. This test does the same on a private server:

* initdb into a fresh temporary folder, as the `postgres` system user when
  the test runs as root (initdb refuses root); the server listens on a
  socket in that folder and on a free loopback port. Socket connections are
  trusted (the image's initdb default, which the script relies on); TCP
  connections need a SCRAM password (the image's `host all all all
  scram-sha-256`, the rule the services' pods meet: 127.0.0.1 stands in
  for the pod network);
* the script's text is taken from the rendered overlay and executed as a
  file (its #! line), with the environment of the StatefulSets
  postgres-posts, postgres-comments and postgres-query (the Secrets'
  passwords generated as docs/deploy.md does, `openssl rand -hex 24`;
  query's is made awkward on purpose, quotes, backslash, `$`, spaces, to
  show it reaches the server as data), plus what the entrypoint sets
  (PGDATA, PGPASSWORD) and PGHOST/PGPORT naming the private socket where
  the image uses its default one. The three run on one server here (in the
  cluster each has its own), so their isolation from each other is
  checked too.

The machine's own server (127.0.0.1:5432) is never touched: the script
revokes CONNECT on the database postgres, and before it runs, the exact
environment it gets is checked to reach the private server.

Checked: the script succeeds and creates a login role that owns its
database, closed to everyone else; the role logs in with its password over
TCP (a wrong one is refused), creates, fills and drops a table in the
public schema; it cannot connect to the database postgres nor to another
service's database, cannot CREATE DATABASE or CREATE ROLE, raise its own
attributes or SET ROLE to the superuser, is no superuser and a member of no
role; `blog serve posts` and `blog serve comments`, with their Deployments'
BLOG_DATABASE_URL (the Secret substituted as the kubelet does, the
Service's address translated; an HTTP event bus in place of NATS), migrate
their databases as their roles, become ready on /readyz and store a post
and a comment there, creating no database and owning every table; a second
run (the script is for an empty volume only) fails and changes nothing, and
a run without APP_PASSWORD fails before creating anything.

Needs PostgreSQL's server binaries (Debian's `postgresql` package,
/usr/lib/postgresql/<version>/bin; the newest there is used, at least 15 as
the public schema's privileges differ before it): outside CI the tests skip
without them; in CI ($CI set) they fail. The server is the machine's
version, not the image's (17); the script's SQL means the same on both. The
service test also needs the blog binary (BLOG_BIN).
"""

import collections
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import COURSE, ROOT, blog_bin, by_kind, http_status, in_ci, pod_spec, render

# The services whose StatefulSets run the script here; the first two also
# run as `blog serve` processes against it.
SERVICES = ["posts", "comments", "query"]
SERVED = ["posts", "comments"]
MACHINE_PORT = 5432  # the machine's shared server: never ours
PG_LIB = Path("/usr/lib/postgresql")  # Debian's: <version>/bin
MIN_VERSION = 15
AWKWARD_PASSWORD = "it's \"quoted\" $HOME \\ ;DROP ROLE postgres; -- "
READY_TIMEOUT = 30  # s for a service to migrate and answer 200 on /readyz


def unavailable(message):
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin_dir():
    """The newest /usr/lib/postgresql/<version>/bin with the server and psql."""
    found = []
    for d in PG_LIB.glob("*/bin"):
        if d.parent.name.isdigit() and all((d / t).is_file() for t in ("initdb", "pg_ctl", "postgres", "psql")):
            found.append((int(d.parent.name), d))
    if not found:
        unavailable(f"PostgreSQL's server binaries are not installed (no {PG_LIB}/<version>/bin with "
                    "initdb, pg_ctl, postgres and psql): apt-get install postgresql")
    version, bin_dir = max(found)
    if version < MIN_VERSION:
        unavailable(f"PostgreSQL {version} is too old for this test (at least {MIN_VERSION}: the public schema's "
                    "privileges changed in 15; the image runs 17)")
    return bin_dir


def resolve_env(container, secret_values):
    """A container's environment as the kubelet gives it: Secrets read,
    $(VAR) replaced by the variables defined before it."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            value = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            value = secret_values[(ref["name"], ref["key"])]
        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


class PrivateServer:
    """A PostgreSQL of our own in a temporary folder, on its socket there and
    a free loopback port."""

    def __init__(self, bin_dir, superuser):
        self.bin = bin_dir
        self.superuser_name = superuser  # initdb --username, as the image passes POSTGRES_USER
        self.as_owner = []  # the prefix that runs a command as the server's OS user
        self.owner = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root without a `postgres` system user to run initdb as "
                            "(Debian's postgresql package creates it)")
            runuser = shutil.which("runuser")
            if not runuser:
                unavailable("running as root without runuser to run initdb as the postgres user")
            self.as_owner = [runuser, "-u", "postgres", "--"]
        self.port = free_port()
        assert self.port != MACHINE_PORT
        self.dir = Path(tempfile.mkdtemp(prefix="blog-pginit-"))  # short: a socket path has a length limit
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.script = None
        if self.owner:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)

    def base_env(self):
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}

    def run_as_owner(self, argv, env, timeout=60):
        """argv as the server's OS user, with exactly `env` (no inherited PG* variables)."""
        if self.as_owner:
            command = [*self.as_owner, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
            env = None
        else:
            command = argv
        return subprocess.run(command, env=env, cwd=self.dir, capture_output=True, text=True, timeout=timeout)

    def start(self):
        init = self.run_as_owner(
            [str(self.bin / "initdb"), "--pgdata", str(self.data), "--username", self.superuser_name, "--encoding", "UTF8",
             "--locale", "C", "--auth-local", "trust", "--auth-host", "scram-sha-256", "--no-sync"],
            self.base_env(),
        )
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        started = self.run_as_owner(
            [str(self.bin / "pg_ctl"), "--pgdata", str(self.data), "--log", str(self.log), "--wait",
             "--timeout", "30", "-o", options, "start"],
            self.base_env(),
        )
        assert started.returncode == 0, f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n{self.logs()}"

    def stop(self):
        try:
            if (self.data / "postmaster.pid").exists():
                stopped = self.run_as_owner(
                    [str(self.bin / "pg_ctl"), "--pgdata", str(self.data), "--mode", "fast", "--wait",
                     "--timeout", "20", "stop"],
                    self.base_env(),
                    timeout=30,
                )
                if stopped.returncode != 0 and (self.data / "postmaster.pid").exists():
                    os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self):
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    # ---------------------------------------------------------- clients

    def superuser(self, sql, database="postgres"):
        """Rows of `sql` run as the superuser over the socket (as an operator would)."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-h", str(self.dir), "-p", str(self.port), "-U", self.superuser_name,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql],
            env={**self.base_env(), "PGPASSFILE": os.devnull}, capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, f"{sql!r} as the superuser: {done.stderr}"
        return done.stdout.splitlines()

    def as_role(self, user, password, database, *statements):
        """psql over TCP as `user` with `password`: each statement on its own."""
        conninfo = f"host=127.0.0.1 port={self.port} dbname={database} user={user} sslmode=disable connect_timeout=5"
        argv = [str(self.bin / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-Atq", "-d", conninfo]
        for statement in statements or ("SELECT 1",):
            argv += ["-c", statement]
        return subprocess.run(
            argv, env={**self.base_env(), "PGPASSWORD": password, "PGPASSFILE": os.devnull},
            capture_output=True, text=True, timeout=30,
        )

    # ---------------------------------------------------------- the script

    def install_script(self, text, name):
        """The ConfigMap's key as the volume shows it: a file of mode 0555."""
        self.script = self.dir / name
        self.script.write_text(text)
        if self.owner:
            os.chown(self.script, self.owner.pw_uid, self.owner.pw_gid)
        self.script.chmod(0o555)

    def script_env(self, container_env):
        """The container's environment, plus what the entrypoint sets, with
        PGHOST/PGPORT naming our socket where the image uses its default."""
        env = {**self.base_env(), **container_env}
        env["PGDATA"] = str(self.data)
        env["PGPASSWORD"] = container_env.get("PGPASSWORD", container_env.get("POSTGRES_PASSWORD", ""))
        env["PGHOST"], env["PGPORT"] = str(self.dir), str(self.port)
        env["PATH"] = self.base_env()["PATH"]
        return env

    def run_script(self, env):
        # Never against another server: the environment the script gets
        # reaches this one.
        probe = self.run_as_owner([str(self.bin / "psql"), "-X", "-Atq", "-U", env["POSTGRES_USER"], "-d", "postgres",
                                   "-c", "SHOW data_directory"], env)
        assert probe.returncode == 0 and probe.stdout.strip() == str(self.data), (
            f"the script's environment does not reach the private server: {probe.stdout}{probe.stderr}")
        return self.run_as_owner([str(self.script)], env)


@pytest.fixture(scope="module")
def server():
    """A private server on which the overlay's init script has run once for
    each of SERVICES, with their StatefulSets' environment."""
    bin_dir = postgres_bin_dir()
    docs = render("overlays/production")
    scripts = by_kind(docs, "ConfigMap")["postgres-init"]["data"]
    (name,) = scripts
    statefulsets = by_kind(docs, "StatefulSet")
    secret_values = collections.defaultdict(lambda: secrets.token_hex(24))  # docs/deploy.md: openssl rand -hex 24
    secret_values[("postgres-query", "password")] = AWKWARD_PASSWORD + secrets.token_hex(4)
    envs = {}
    for app in SERVICES:
        (container,) = pod_spec(statefulsets[f"postgres-{app}"])["containers"]
        envs[app] = resolve_env(container, secret_values)
    (superuser,) = {env["POSTGRES_USER"] for env in envs.values()}
    s = PrivateServer(bin_dir, superuser)
    try:
        s.start()
        s.install_script(scripts[name], name)
        s.docs, s.secret_values, s.env, s.first_runs = docs, secret_values, envs, {}
        for app in SERVICES:
            s.first_runs[app] = s.run_script(s.script_env(s.env[app]))
            done = s.first_runs[app]
            if done.returncode != 0:
                pytest.fail(f"{name} failed for {app} (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n{s.logs()}")
        yield s
    finally:
        s.stop()


def role(server, app):
    env = server.env[app]
    return env["APP_USER"], env["APP_PASSWORD"], env["APP_DATABASE"]


def test_the_script_creates_a_role_that_owns_its_database_closed_to_everyone_else(server):
    for app in SERVICES:
        user, _, database = role(server, app)
        assert (user, database) == (app, f"blog_{app}"), "the StatefulSet's APP_USER and APP_DATABASE"
        done = server.first_runs[app]
        assert f"postgres-init: role {user} owns database {database}" in done.stdout, done.stdout
        assert server.superuser(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{database}'") == [user]
        # Nobody but the owner holds a privilege on it (PUBLIC is grantee 0).
        others = server.superuser(
            "SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a "
            f"WHERE d.datname = '{database}' AND a.grantee <> d.datdba")
        assert others == ["0"], f"{database} is open to others"
        assert server.superuser(f"SELECT datacl IS NOT NULL FROM pg_database WHERE datname = '{database}'") == ["t"]
    # The superuser (operators) still reaches the database postgres.
    assert server.superuser("SELECT current_database()") == ["postgres"]


def test_each_role_logs_in_with_its_password_and_creates_tables_in_its_database(server):
    for app in SERVICES:
        user, password, database = role(server, app)
        done = server.as_role(
            user, password, database,
            "SELECT current_user, current_database(), current_setting('is_superuser')",
            "CREATE TABLE public.init_check (id int PRIMARY KEY, note text)",
            "INSERT INTO public.init_check VALUES (1, 'written')",
            "SELECT note, pg_get_userbyid(c.relowner) FROM public.init_check, pg_class c "
            "WHERE c.oid = 'public.init_check'::regclass",
            "DROP TABLE public.init_check",
        )
        assert done.returncode == 0, f"{app}: {done.stderr}"
        assert done.stdout.splitlines() == [f"{user}|{database}|off", f"written|{user}"]
        wrong = server.as_role(user, password + "x", database)
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr


def test_each_role_is_kept_out_of_the_other_databases(server):
    for app in SERVICES:
        user, password, _ = role(server, app)
        others = ["postgres", "template1"] + [role(server, other)[2] for other in SERVICES if other != app]
        for database in others:
            done = server.as_role(user, password, database)
            assert done.returncode != 0, f"{user} connected to {database}"
            assert f'permission denied for database "{database}"' in done.stderr, done.stderr


def test_no_role_can_create_databases_or_roles_or_is_a_superuser(server):
    for app in SERVICES:
        user, password, database = role(server, app)
        attributes = server.superuser(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
            f"FROM pg_roles WHERE rolname = '{user}'")
        assert attributes == ["f|f|f|f|f|t"], f"{user}: super, createdb, createrole, replication, bypassrls, login"
        memberships = server.superuser(
            f"SELECT count(*) FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = '{user}')")
        assert memberships == ["0"], f"{user} is granted another role"
        for statement, error in [
            ("CREATE DATABASE init_check", "permission denied to create database"),
            ("CREATE ROLE init_check", "permission denied to create role"),
            (f'ALTER ROLE "{user}" CREATEDB', "permission denied"),
            (f'SET ROLE "{server.superuser_name}"', "permission denied"),
        ]:
            done = server.as_role(user, password, database, statement)
            assert done.returncode != 0 and error in done.stderr, f"{user}: {statement}: {done.stderr or done.stdout}"
    assert not server.superuser("SELECT datname FROM pg_database WHERE datname = 'init_check'")
    assert not server.superuser("SELECT rolname FROM pg_roles WHERE rolname = 'init_check'")


# ---------------------------------------------------------- the services


def post_json(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


class Service:
    def __init__(self, name, argv, env, port, log):
        self.name, self.port, self.log = name, port, log
        self.process = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=log.parent)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def logs(self):
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def test_the_services_migrate_their_databases_as_their_roles_and_become_ready(server, tmp_path):
    binary = blog_bin()
    deployments = by_kind(server.docs, "Deployment")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1", "BLOG_HOST": "127.0.0.1"}
    token = None
    planned = {}
    for app in SERVED:
        (container,) = pod_spec(deployments[COURSE[app][0]])["containers"]
        env = resolve_env(container, server.secret_values)
        url = env["BLOG_DATABASE_URL"]
        service_address = f"@postgres-{app}:5432/"
        assert service_address in url, url
        env["BLOG_DATABASE_URL"] = url.replace(service_address, f"@127.0.0.1:{server.port}/")
        token = env.get("BLOG_INTERNAL_TOKEN", token)
        # No NATS here: the HTTP event bus carries the events instead.
        env = {k: v for k, v in env.items() if not k.startswith("BLOG_NATS_")}
        data = tmp_path / app
        data.mkdir()
        planned[app] = {**env, **base, "BLOG_PORT": str(free_port()), "BLOG_DATA_DIR": str(data),
                        "BLOG_STARTUP_TIMEOUT": "10"}
    bus_port = free_port()
    (tmp_path / "event-bus").mkdir()
    bus_env = {**base, "BLOG_PORT": str(bus_port), "BLOG_DATA_DIR": str(tmp_path / "event-bus"), "BLOG_SUBSCRIBERS": ""}
    if token:
        bus_env["BLOG_INTERNAL_TOKEN"] = token
    started = time.monotonic()
    running = []
    try:
        running.append(Service("event-bus", [binary, "serve", "event-bus"], bus_env, bus_port, tmp_path / "event-bus.log"))
        for app, env in planned.items():
            env["BLOG_BUS"] = f"http://127.0.0.1:{bus_port}"
            running.append(Service(app, [binary, "serve", app], env, int(env["BLOG_PORT"]), tmp_path / f"{app}.log"))
        pending = {s.name: s for s in running}
        while pending and time.monotonic() < started + READY_TIMEOUT:
            for name, s in list(pending.items()):
                assert s.process.poll() is None, f"{name} exited ({s.process.returncode}):\n{s.logs()}"
                if http_status(s.url + "/readyz") == 200:
                    del pending[name]
            time.sleep(0.1)
        assert not pending, "never ready: " + "\n".join(f"--- {n}\n{s.logs()}" for n, s in pending.items())
        services = {s.name: s for s in running}

        post = post_json(services["posts"].url + "/posts/create", {"title": "init script check"})
        # The course's answer: the post's comments.
        (comment,) = post_json(services["comments"].url + f"/posts/{post['id']}/comments", {"content": "stored as comments"})

        stored = {
            "posts": server.superuser(f"SELECT title FROM posts WHERE id = '{post['id']}'", "blog_posts"),
            "comments": server.superuser(f"SELECT content FROM comments WHERE id = '{comment['id']}'", "blog_comments"),
        }
        assert stored == {"posts": ["init script check"], "comments": ["stored as comments"]}
        for app in SERVED:
            user, _, database = role(server, app)
            migrations = sorted(p.name for p in (ROOT / "crates" / app / "migrations" / "postgres").glob("*.sql"))
            ran = server.superuser("SELECT count(*), bool_and(success) FROM _sqlx_migrations", database)
            assert ran == [f"{len(migrations)}|t"], f"{app}: its migrations {migrations}, ran {ran}"
            owners = server.superuser(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                database)
            assert owners == [user], f"{database}: tables owned by {owners}"
        expected = {"postgres", "template0", "template1"} | {role(server, app)[2] for app in SERVICES}
        assert set(server.superuser("SELECT datname FROM pg_database")) == expected
        assert time.monotonic() - started < READY_TIMEOUT
    finally:
        for s in running:
            if s.process.poll() is None:
                s.process.send_signal(signal.SIGTERM)
        for s in running:
            try:
                s.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.process.kill()
                s.process.wait()


# ---------------------------------------------------------- once only


def test_a_second_run_fails_and_changes_nothing(server):
    user, password, database = role(server, "posts")
    other_password = secrets.token_hex(24)
    again = server.run_script(server.script_env({**server.env["posts"], "APP_PASSWORD": other_password}))
    assert again.returncode != 0, "the script is for an empty volume: a second run must fail"
    assert f'role "{user}" already exists' in again.stderr, again.stderr
    assert server.as_role(user, password, database).returncode == 0, "the first password still works"
    assert server.as_role(user, other_password, database).returncode != 0, "the second run set no password"


def test_a_run_without_its_variables_fails_before_creating_anything(server):
    env = {**server.env["posts"], "APP_USER": "init_check", "APP_DATABASE": "blog_init_check"}
    del env["APP_PASSWORD"]
    done = server.run_script(server.script_env(env))
    assert done.returncode != 0 and "APP_PASSWORD" in done.stderr, done.stderr
    assert not server.superuser("SELECT rolname FROM pg_roles WHERE rolname = 'init_check'")
    assert not server.superuser("SELECT datname FROM pg_database WHERE datname = 'blog_init_check'")
