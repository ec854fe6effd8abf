// Keyboard shortcuts: 1-9 choose a response, t tie, s skip, u undo; Esc leaves a text box.
// Each shortcut clicks the button it stands for, so the keyboard and the mouse send the same form.
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target.matches("textarea, input, select")) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  let button = null;
  if (/^[1-9]$/.test(event.key)) button = document.getElementById("choose-" + (Number(event.key) - 1));
  else if (event.key === "t") button = document.getElementById("tie");
  else if (event.key === "s") button = document.getElementById("skip");
  else if (event.key === "u") button = document.getElementById("undo");
  if (button && !button.disabled) {
    event.preventDefault();
    button.click();
  }
});
// One submission per page: a second click or key press while the first is in flight does nothing
// (the server would not count it twice anyway: the form's request_id makes a retry a no-op).
for (const form of document.querySelectorAll("form")) {
  form.addEventListener("submit", (event) => {
    if (form.dataset.sent) event.preventDefault();
    form.dataset.sent = "1";
  });
}
