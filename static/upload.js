/* Upload page enhancements: drag and drop, type/size checks, preview, busy state.
 * The form works without this script; the server repeats every check. */
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  document.documentElement.classList.add("has-js");

  var input = document.getElementById("image");
  var zone = document.getElementById("dropzone");
  var errorBox = document.getElementById("upload-error");
  var preview = document.getElementById("preview");
  var previewImg = document.getElementById("preview-img");
  var previewName = document.getElementById("preview-name");
  var button = document.getElementById("submit");
  var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);
  var maxMb = form.getAttribute("data-max-mb");
  var okTypes = ["image/jpeg", "image/png"];
  var okExt = /\.(jpe?g|png)$/i;
  var heicExt = /\.(heic|heif)$/i;
  var heicMessage = form.getAttribute("data-heic-message");
  var previewToken = 0;

  function problemWith(file) {
    if (!file) { return "Please choose a photo to upload."; }
    if (file.size === 0) { return "The chosen file is empty. Please choose a JPEG or PNG photo."; }
    if (heicMessage && (heicExt.test(file.name) || /^image\/hei[cf]/.test(file.type))) { return heicMessage; }
    if (okTypes.indexOf(file.type) < 0 && !okExt.test(file.name)) {
      return "That file is not a JPEG or PNG image. Please choose a JPEG or PNG photo.";
    }
    if (file.size > maxBytes) {
      return "The file is larger than " + maxMb + " MB. Please choose a smaller photo.";
    }
    return "";
  }

  function showError(message) {
    errorBox.textContent = message;
    if (message) { input.setAttribute("aria-invalid", "true"); } else { input.removeAttribute("aria-invalid"); }
  }

  // "12 KB" under a megabyte ("0.0 MB" says nothing), "2.4 MB" above; at least "1 KB" for a tiny file.
  function sizeText(bytes) {
    if (bytes < 1048576) { return Math.max(1, Math.round(bytes / 1024)) + " KB"; }
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  // A data: URL, not a blob: one: the Content-Security-Policy allows img-src 'self' data: only.
  function showPreview(file) {
    previewToken += 1;
    if (!file || problemWith(file)) { preview.hidden = true; previewImg.removeAttribute("src"); return; }
    var mine = previewToken;
    var reader = new FileReader();
    reader.onload = function () {
      if (mine !== previewToken) { return; }  // a newer file was chosen meanwhile
      previewImg.src = reader.result;
      previewName.textContent = file.name + " (" + sizeText(file.size) + ")";
      preview.hidden = false;
    };
    reader.readAsDataURL(file);
  }

  function check() {
    var file = input.files && input.files[0];
    var problem = file ? problemWith(file) : "";
    showError(problem);
    showPreview(file);
    return !problem;
  }

  input.addEventListener("change", check);

  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("is-dragover");
    });
  });
  ["dragleave", "dragend", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("is-dragover"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) { return; }
    if (files.length > 1) { showError("Please drop one photo at a time."); return; }
    try {
      var transfer = new DataTransfer();
      transfer.items.add(files[0]);
      input.files = transfer.files;
    } catch (e) {
      showError("Your browser cannot take dropped files here; please use the file picker.");
      return;
    }
    check();
    input.focus();
  });

  form.addEventListener("submit", function (event) {
    var file = input.files && input.files[0];
    var problem = problemWith(file);
    if (problem) {
      event.preventDefault();
      showError(problem);
      input.focus();
      return;
    }
    button.disabled = true;
    button.classList.add("is-busy");
    button.setAttribute("aria-busy", "true");
    button.querySelector(".button-text").textContent = "Analysing image…";
  });

  // Coming back with the browser's Back button must not leave the button stuck as busy.
  window.addEventListener("pageshow", function () {
    button.classList.remove("is-busy");
    button.removeAttribute("aria-busy");
    button.querySelector(".button-text").textContent = "Check this image";
    if (!form.hasAttribute("data-model-missing")) { button.disabled = false; }
  });
}());
