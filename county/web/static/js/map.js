// The console's map: Leaflet (window.L, from the xstatic-leaflet package at /static/vendor/leaflet/) with
// the county's tile layer from GET /api/v1/map ([map] in county.toml: none, 天地图, 高德/AMap or the county's
// own tile server). With no tiles the map is a plain background with the county's outline and the boxes:
// it works on an intranet with no internet.
//
// Everything the API gives and takes is WGS-84. A GCJ-02 tile layer (高德, or a custom one said to be
// GCJ-02) needs every point shifted before it is drawn (toView) and every point the user draws shifted back
// before it is saved (fromView): gcj02.js, the same arithmetic as county/geo.py.
import { api } from "./api.js";
import { gcj02ToWgs84, wgs84ToGcj02 } from "./gcj02.js";
import { t } from "./i18n.js";

let settingsPromise = null;
export function mapSettings() {
  if (!settingsPromise) settingsPromise = api("/api/v1/map");
  return settingsPromise;
}

const DEFAULT_CENTER = [21.95, 101.25];  // shown only when neither an outline nor a box has a position

// Leaflet puts a string tooltip or attribution in as HTML: names (fences are named by users) go in as text
function textNode(s) {
  const span = document.createElement("span");
  span.textContent = String(s);
  return span;
}
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// A map in `el`; resolves to a small handle the pages draw through (all coordinates WGS-84 [lat, lon]).
export async function createMap(el, {zoom = 13} = {}) {
  const L = window.L;
  if (!L) throw new Error("Leaflet did not load (/static/vendor/leaflet/leaflet.js)");
  const settings = await mapSettings();
  const tiles = settings.tiles || {kind: "none", crs: "WGS84", layers: []};
  const gcj = tiles.crs === "GCJ02";
  const toView = gcj ? (lat, lon) => wgs84ToGcj02(lat, lon) : (lat, lon) => [lat, lon];
  const fromView = gcj ? (lat, lon) => gcj02ToWgs84(lat, lon) : (lat, lon) => [lat, lon];
  const map = L.map(el, {zoomControl: true, attributionControl: true, maxZoom: tiles.max_zoom || 18});
  // the library's credit, as plain text (its default prefix carries a flag icon)
  map.attributionControl.setPrefix('<a href="https://leafletjs.com" target="_blank" rel="noopener">Leaflet</a>');
  el.dataset.tiles = tiles.kind;
  el.dataset.crs = tiles.crs;
  if (tiles.layers && tiles.layers.length) {
    for (const layer of tiles.layers) {
      L.tileLayer(layer.url, {subdomains: layer.subdomains || "abc", maxZoom: tiles.max_zoom || 18,
        attribution: escapeHtml(tiles.attribution || "")}).addTo(map);
    }
  } else {
    el.classList.add("map-plain");
    map.attributionControl.addAttribution(escapeHtml(t("No map tiles: county outline and places only")));
  }
  const latLng = (lat, lon) => L.latLng(...toView(lat, lon));
  const geoJsonOptions = (style) => ({
    style, coordsToLatLng: (c) => latLng(c[1], c[0]), interactive: false,
  });
  const drawn = [];
  let outline = null;
  if (settings.outline) {
    outline = L.geoJSON(settings.outline, geoJsonOptions({className: "map-outline", color: "#12325a", weight: 2, fill: true,
      fillColor: "#dfe8f3", fillOpacity: gcj || tiles.layers.length ? 0.05 : 0.6})).addTo(map);
    drawn.push(outline);
  }
  const boxes = L.layerGroup().addTo(map);
  for (const p of settings.places || []) {
    const m = L.circleMarker(latLng(p.lat, p.lon), {radius: 6, color: "#0b5cad", weight: 2, fillColor: "#fff",
      fillOpacity: 1}).bindTooltip(textNode(`${p.name} · ${p.village_name}`));
    m.addTo(boxes);
  }
  if (outline) map.fitBounds(outline.getBounds(), {padding: [10, 10]});
  else if ((settings.places || []).length) {
    map.fitBounds(L.latLngBounds(settings.places.map((p) => latLng(p.lat, p.lon))).pad(0.3));
  } else map.setView(latLng(...DEFAULT_CENTER), zoom);

  const handle = {
    L, map, settings, tiles, toView, fromView, latLng,
    // a point (a wearer's position): a circle marker with a tooltip
    point(lat, lon, {label = "", color = "#b42318", radius = 9} = {}) {
      const m = L.circleMarker(latLng(lat, lon), {radius, color, weight: 3, fillColor: color, fillOpacity: 0.5});
      if (label) m.bindTooltip(textNode(label), {permanent: false});
      return m.addTo(map);
    },
    // a stored fence: a GeoJSON Feature (Polygon / MultiPolygon, or a circle = Point + properties.radius_m)
    fence(feature, {color = "#9a6400", label = ""} = {}) {
      const g = feature && feature.geometry;
      let layer;
      if (g && g.type === "Point") {
        layer = L.circle(latLng(g.coordinates[1], g.coordinates[0]),
          {radius: (feature.properties || {}).radius_m || 1, color, weight: 2, fillOpacity: 0.1});
      } else {
        layer = L.geoJSON(feature, {style: {color, weight: 2, fillOpacity: 0.1}, coordsToLatLng: (c) => latLng(c[1], c[0])});
      }
      if (label) layer.bindTooltip(textNode(label));
      return layer.addTo(map);
    },
    // a track: [{lat, lon, ts}] oldest first
    track(points, {color = "#0b5cad"} = {}) {
      return L.polyline(points.map((p) => latLng(p.lat, p.lon)), {color, weight: 3, opacity: 0.8}).addTo(map);
    },
    fit(layers, maxZoom = 17) {
      const bounds = L.latLngBounds([]);
      for (const layer of layers) {
        if (!layer) continue;
        if (layer.getBounds) bounds.extend(layer.getBounds());
        else if (layer.getLatLng) bounds.extend(layer.getLatLng());
      }
      if (bounds.isValid()) map.fitBounds(bounds.pad(0.2), {maxZoom});
    },
    // the WGS-84 [lat, lon] of a Leaflet LatLng the user clicked
    wgs(latlng) {
      return fromView(latlng.lat, latlng.lng);
    },
  };
  el.dataset.ready = "1";
  return handle;
}
