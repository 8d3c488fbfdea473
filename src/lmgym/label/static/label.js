// Keys of the labelling page: 1 / 2 pick a response, t tie, s skip, u undo the last judgment,
// r and e move to the optional rating and reason, Escape (or Enter in the reason) comes back.
"use strict";

// Deferred: the document is parsed when this runs.
(() => {
  const judge = document.getElementById("judge");
  const undo = document.getElementById("undo");
  let sent = false; // one answer per page: a key held or pressed twice must not post again

  const submit = (form, button) => {
    if (sent || !form) return;
    sent = true;
    document.body.classList.add("sending");
    form.requestSubmit(button);
  };

  document.addEventListener("keydown", (event) => {
    const field = event.target.closest ? event.target.closest("input, select, textarea") : null;
    if (field) {
      if (event.key === "Escape" || (event.key === "Enter" && field.id === "reason")) {
        event.preventDefault();
        field.blur();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const key = event.key.toLowerCase();
    if (judge && ["1", "2", "t", "s"].includes(key)) {
      event.preventDefault();
      submit(judge, judge.querySelector(`button[value="${key}"]`));
    } else if (key === "u" && undo) {
      event.preventDefault();
      submit(undo);
    } else if ((key === "r" || key === "e") && judge) {
      event.preventDefault();
      document.getElementById(key === "r" ? "rating" : "reason").focus();
    }
  });
  document.body.dataset.keys = "ready"; // keys work from now on (tests wait for it)
})();
