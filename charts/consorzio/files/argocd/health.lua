-- Argo CD's health of a consorzio Municipality or SharedService, from the conditions the operator
-- writes (the kstatus conventions): Degraded while Stalled (the operator has given up until a
-- person acts: the reason and message say what to fix), Healthy when Ready, Suspended when Ready
-- and suspended, Progressing otherwise (Reconciling, or the operator has not seen this generation).
-- Install: in argocd-cm, resource.customizations.health.consorzio.io_Municipality and
-- resource.customizations.health.consorzio.io_SharedService, both this script.
local hs = { status = "Progressing", message = "waiting for the consorzio operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "waiting for the consorzio operator to see generation " .. generation
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local function says(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end
if found.Stalled ~= nil and found.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(found.Stalled)
elseif found.Ready ~= nil and found.Ready.status == "True" then
  local suspended = obj.spec ~= nil and obj.spec.suspended == true
  hs.status = suspended and "Suspended" or "Healthy"
  hs.message = found.Ready.message or ""
elseif found.Reconciling ~= nil and found.Reconciling.status == "True" then
  hs.message = says(found.Reconciling)
elseif found.Ready ~= nil then
  hs.message = says(found.Ready)
end
return hs
