// Compare: the page is rendered by the server (escaped); this only keeps the live badge current.
"use strict";

window.farm.watch(async () => {});
