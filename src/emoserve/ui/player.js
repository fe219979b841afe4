// The timeline's player (gr.HTML js_on_load: `element` is the component, whose content each result replaces).
// Listeners sit on `element` in the capture phase, so they keep working for every new result; media
// events do not bubble, but they do pass through their ancestors while capturing.
const views = new WeakMap();

function view() {
  const root = element.querySelector(".emo-timeline");
  if (!root) return null;
  let v = views.get(root);
  if (!v) {
    const audio = root.querySelector("audio");
    if (!audio.src) audio.src = audio.dataset.src;
    v = {
      audio,
      data: JSON.parse(root.dataset.timeline),
      cursors: Array.from(root.querySelectorAll(".emo-cursor")),
      readout: root.querySelector(".emo-readout"),
      frame: 0,
    };
    views.set(root, v);
  }
  return v;
}

function describe(data, t) {
  const when = t.toFixed(2) + " s";
  if (data.frames) {
    const f = data.frames;
    const i = Math.min(f.top.length - 1, Math.floor((t / f.seconds) * f.top.length));
    if (i >= 0) {
      const k = f.top[i];
      return when + " · " + data.emoji[k] + " " + data.labels[k] + " " + Math.round(100 * f.confidence[i]) + "%";
    }
  }
  if (data.segments) {
    const s = data.segments.find((seg) => seg[0] <= t && t < seg[1]);
    if (!s) return when + " · no speech";
    return s[2] < 0 ? when : when + " · " + data.emoji[s[2]] + " " + data.labels[s[2]] + " " + Math.round(100 * s[3]) + "%";
  }
  return when;
}

function show(v) {
  const t = v.audio.currentTime || 0;
  const percent = Math.min(100, (100 * t) / v.data.duration);
  for (const cursor of v.cursors) cursor.style.left = percent + "%";
  v.readout.textContent = describe(v.data, t);
}

function follow() {
  const v = view();
  if (!v) return;
  show(v);
  if (!v.audio.paused && !v.audio.ended) v.frame = requestAnimationFrame(follow);
}

element.addEventListener("play", () => {
  const v = view();
  if (v) cancelAnimationFrame(v.frame);
  follow();
}, true);
for (const type of ["timeupdate", "seeked", "pause", "ended", "loadedmetadata"]) {
  element.addEventListener(type, () => {
    const v = view();
    if (v) show(v);
  }, true);
}
element.addEventListener("click", (event) => {
  const track = event.target.closest(".emo-track");
  const v = view();
  if (!track || !v) return;
  const box = track.getBoundingClientRect();
  v.audio.currentTime = Math.max(0, Math.min(1, (event.clientX - box.left) / box.width)) * v.data.duration;
  show(v);
});
watch("value", () => view());
view();
