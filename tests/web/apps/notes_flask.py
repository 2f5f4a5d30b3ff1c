"""A small Flask staff app as Flask's own documentation builds one — Flask-Login for its own
login, Flask-WTF forms with CSRF protection (CSRFProtect), a file upload — written the way an app
is written without a gateway in mind: it knows nothing of proxies (no ProxyFix, no trusted
headers). The real-apps tests run it behind the gateway (docs/real-apps.md).

Run: python notes_flask.py PORT UPLOAD_DIR
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from flask import Flask, abort, redirect, render_template_string, send_from_directory, url_for
from flask_login import (
    LoginManager,
    UserMixin,
    login_required,
    login_user,
    logout_user,
)
from flask_wtf import CSRFProtect, FlaskForm
from flask_wtf.file import FileField
from werkzeug.utils import secure_filename
from wtforms import PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired

USERS = {"clerk": "notes password 1"}
app = Flask(__name__)
app.config["SECRET_KEY"] = secrets.token_hex(16)
CSRFProtect(app)
login_manager = LoginManager(app)
login_manager.login_view = "login"
NOTES: dict[int, dict[str, str]] = {}

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body><h1>{{ title }}</h1>
{% if current_user.is_authenticated %}<form method="post" action="{{ url_for('logout') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
<p id="who">{{ current_user.id }}</p><button id="logout">Log out of notes</button></form>{% endif %}
{{ body|safe }}</body></html>"""


class User(UserMixin):
    def __init__(self, name: str) -> None:
        self.id = name


@login_manager.user_loader
def load_user(name: str) -> User | None:
    return User(name) if name in USERS else None


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


class NoteForm(FlaskForm):
    title = StringField("Title", validators=[DataRequired()])
    text = TextAreaField("Text")
    attachment = FileField("Attachment")


def page(title: str, body: str, **ctx: object) -> str:
    inner = render_template_string(body, **ctx)
    return render_template_string(PAGE, title=title, body=inner)


@app.route("/login", methods=["GET", "POST"])
def login() -> object:
    form = LoginForm()
    if form.validate_on_submit():
        if USERS.get(form.username.data or "") == form.password.data:
            login_user(User(form.username.data or ""))
            return redirect(url_for("index"))
        form.password.errors.append("wrong user name or password")
    return page(
        "Notes: log in",
        """<form method="post">{{ form.csrf_token }}
        {{ form.username.label }} {{ form.username(id="username") }}
        {{ form.password.label }} {{ form.password(id="password") }}
        {% for e in form.password.errors %}<p class="error">{{ e }}</p>{% endfor %}
        <button id="login">Log in</button></form>""",
        form=form,
    )


@app.route("/logout", methods=["POST"])
@login_required
def logout() -> object:
    logout_user()
    return redirect(url_for("login"))


@app.route("/")
@login_required
def index() -> object:
    return page(
        "Notes",
        """<p><a id="new" href="{{ url_for('new') }}">New note</a></p><ul>
        {% for id, n in notes.items() %}<li><a class="note" href="{{ url_for('edit', note=id) }}">
        {{ n.title }}</a>{% if n.file %} (<a href="{{ url_for('files', name=n.file) }}">
        {{ n.file }}</a>){% endif %}</li>{% endfor %}</ul>""",
        notes=NOTES,
    )


def _save(form: NoteForm, note: dict[str, str]) -> None:
    note["title"], note["text"] = form.title.data or "", form.text.data or ""
    upload = form.attachment.data
    if upload:
        name = secure_filename(upload.filename or "file")
        upload.save(Path(app.config["UPLOADS"]) / name)
        note["file"] = name


@app.route("/notes/new", methods=["GET", "POST"])
@login_required
def new() -> object:
    form = NoteForm()
    if form.validate_on_submit():
        note: dict[str, str] = {"file": ""}
        _save(form, note)
        NOTES[len(NOTES) + 1] = note
        return redirect(url_for("index"))
    return page("New note", FORM, form=form)


@app.route("/notes/<int:note>", methods=["GET", "POST"])
@login_required
def edit(note: int) -> object:
    if note not in NOTES:
        abort(404)
    form = NoteForm(data=NOTES[note])
    if form.validate_on_submit():
        _save(form, NOTES[note])
        return redirect(url_for("index"))
    return page("Edit note", FORM, form=form)


@app.route("/files/<name>")
@login_required
def files(name: str) -> object:
    return send_from_directory(app.config["UPLOADS"], name)


FORM = """<form method="post" enctype="multipart/form-data">{{ form.csrf_token }}
{{ form.title.label }} {{ form.title(id="title") }}
{{ form.text.label }} {{ form.text(id="text") }}
{{ form.attachment.label }} {{ form.attachment(id="attachment") }}
<button id="save">Save</button></form>"""


if __name__ == "__main__":
    app.config["UPLOADS"] = sys.argv[2]
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
