// The login page: the form posts to /login itself (works without scripts); this only marks it ready and
// keeps a double click from posting twice.
import { $ } from "./dom.js";
import { loaded } from "./session.js";

const form = $("#login-form");
form?.addEventListener("submit", () => { $("#login-submit").disabled = true; });
loaded();
