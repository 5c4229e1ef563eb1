// WGS-84 <-> GCJ-02 in the browser: the same arithmetic as agent/wearables/geo.py (county/geo.py uses it), line for line (tests/test_geo.py
// runs both on the same points through Selenium and checks they agree). Everything the county stores is
// WGS-84; a GCJ-02 tile layer (高德/AMap) needs what is drawn shifted, and what the user draws shifted back.
// Points are (lat, lon) in degrees. Hand-written: twenty lines of published formulas, no package has them.
const A = 6378245.0;
const EE = 0.00669342162296594323;
const INVERSE_STEPS = 30;
const INVERSE_TOLERANCE_DEG = 1e-10;

export function outOfChina(lat, lon) {
  return !(lon >= 72.004 && lon <= 137.8347 && lat >= 0.8293 && lat <= 55.8271);
}

function delta(lat, lon) {
  var x = lon - 105.0, y = lat - 35.0;
  var xpi = x * Math.PI, ypi = y * Math.PI;
  var common = (20.0 * Math.sin(6.0 * xpi) + 20.0 * Math.sin(2.0 * xpi)) * 2.0 / 3.0;
  var dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * Math.sqrt(Math.abs(x)) + common;
  dlat += (20.0 * Math.sin(ypi) + 40.0 * Math.sin(ypi / 3.0)) * 2.0 / 3.0;
  dlat += (160.0 * Math.sin(ypi / 12.0) + 320.0 * Math.sin(ypi / 30.0)) * 2.0 / 3.0;
  var dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * Math.sqrt(Math.abs(x)) + common;
  dlon += (20.0 * Math.sin(xpi) + 40.0 * Math.sin(xpi / 3.0)) * 2.0 / 3.0;
  dlon += (150.0 * Math.sin(xpi / 12.0) + 300.0 * Math.sin(xpi / 30.0)) * 2.0 / 3.0;
  var rad = lat / 180.0 * Math.PI;
  var magic = 1.0 - EE * Math.pow(Math.sin(rad), 2);
  var sqrtMagic = Math.sqrt(magic);
  dlat = dlat * 180.0 / ((A * (1.0 - EE)) / (magic * sqrtMagic) * Math.PI);
  dlon = dlon * 180.0 / (A / sqrtMagic * Math.cos(rad) * Math.PI);
  return [dlat, dlon];
}

export function wgs84ToGcj02(lat, lon) {
  if (outOfChina(lat, lon)) { return [lat, lon]; }
  var d = delta(lat, lon);
  return [lat + d[0], lon + d[1]];
}

export function gcj02ToWgs84(lat, lon) {
  if (outOfChina(lat, lon)) { return [lat, lon]; }
  var wlat = lat, wlon = lon;
  for (var i = 0; i < INVERSE_STEPS; i++) {
    var g = wgs84ToGcj02(wlat, wlon);
    var elat = g[0] - lat, elon = g[1] - lon;
    wlat -= elat; wlon -= elon;
    if (Math.abs(elat) < INVERSE_TOLERANCE_DEG && Math.abs(elon) < INVERSE_TOLERANCE_DEG) { break; }
  }
  return [wlat, wlon];
}

