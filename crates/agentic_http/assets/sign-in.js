// Exchanges the token for a session cookie (HttpOnly, SameSite=Strict);
// keeps the CSRF token for requests that change state.
"use strict";
document.getElementById("sign-in").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = document.getElementById("status");
  const token = document.getElementById("token").value;
  const response = await fetch("/auth/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (response.ok) {
    const session = await response.json();
    sessionStorage.setItem("lion.csrf", session.csrf_token);
    const health = await fetch("/version");
    const version = await health.json();
    status.textContent = `Signed in to ${version.name} ${version.version}.`;
  } else {
    const problem = await response.json();
    status.textContent = problem.detail;
  }
});
