// pd-gateway audit console: the only script the pages run (Content-Security-Policy: script-src
// 'self'; no inline script). It draws the anomalies chart with the vendored uPlot and makes the
// report's Print button print. Every page works without it: the chart's figures are also a table.
(function () {
  "use strict";
  function drawChart(el) {
    if (typeof uPlot === "undefined") return;
    var data = JSON.parse(el.getAttribute("data-chart"));
    var labels = JSON.parse(el.getAttribute("data-labels") || "[]");
    var zone = el.getAttribute("data-tz") || "UTC";
    if (!data.x.length || !data.kinds.length) return; // the table below says "no detections"
    var palette = ["#0b4f8a", "#a40000", "#d17a00", "#3a7d44", "#6a3d9a", "#b15928", "#1f78b4"];
    var series = [{}];
    data.kinds.forEach(function (kind, i) {
      series.push({
        label: labels[i] || kind,
        stroke: palette[i % palette.length],
        width: 2,
        points: { show: true, size: 5 },
      });
    });
    var width = Math.max(320, Math.min(el.parentElement.clientWidth || 900, 1400));
    new uPlot(
      {
        width: width,
        height: 260,
        series: series,
        scales: { x: { time: true } },
        axes: [{}, { label: "n" }],
        // The page's zone, not the browser's: the axis agrees with every time on the page.
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), zone); },
      },
      [data.x].concat(data.y),
      el
    );
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-chart]").forEach(drawChart);
    document.querySelectorAll("[data-print]").forEach(function (b) {
      b.addEventListener("click", function () { window.print(); });
    });
  });
})();
