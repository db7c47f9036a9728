{{/* Names ------------------------------------------------------------------------------------ */}}

{{/* The chart name (nameOverride wins), a DNS-1123 label. */}}
{{- define "llmi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it contains
the chart name, else RELEASE-CHART. Truncated so that "-operator"/"-router" suffixes still fit 63.
*/}}
{{- define "llmi.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "llmi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmi.operator.fullname" -}}
{{- printf "%s-operator" (include "llmi.fullname" .) }}
{{- end }}

{{- define "llmi.router.fullname" -}}
{{- printf "%s-router" (include "llmi.fullname" .) }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{/* Selector labels of the whole release. */}}
{{- define "llmi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "llmi.labels" -}}
helm.sh/chart: {{ include "llmi.chart" . }}
{{ include "llmi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmi
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "router"). */}}
{{- define "llmi.componentSelectorLabels" -}}
{{ include "llmi.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Standard labels of one component's objects: (dict "ctx" $ "component" "router"). */}}
{{- define "llmi.componentLabels" -}}
{{ include "llmi.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------------- */}}

{{/* repository:tag of one image: (dict "ctx" $ "image" .Values.images.runtime); tag defaults to appVersion. */}}
{{- define "llmi.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Models volume ---------------------------------------------------------------------------- */}}

{{/* The claim the operator and the runtime pods mount. */}}
{{- define "llmi.models.claimName" -}}
{{- if .Values.models.existingClaim }}
{{- .Values.models.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "llmi.fullname" .) }}
{{- end }}
{{- end }}

{{/* "hostPath", "nfs" or "" (dynamic): the PersistentVolume the chart creates, if any. */}}
{{- define "llmi.models.source" -}}
{{- if .Values.models.existingClaim }}
{{- else if .Values.models.hostPath }}hostPath
{{- else if or .Values.models.nfs.server .Values.models.nfs.path }}nfs
{{- end }}
{{- end }}

{{/* PersistentVolumes are cluster-scoped: the namespace keeps two releases' names apart. */}}
{{- define "llmi.models.volumeName" -}}
{{- printf "%s-models-%s" (include "llmi.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmi.models.accessModes" -}}
{{- $modes := .Values.models.accessModes }}
{{- if not $modes }}
{{- $modes = list (ternary "ReadWriteMany" "ReadWriteOnce" (eq (include "llmi.models.source" .) "nfs")) }}
{{- end }}
{{- toYaml $modes }}
{{- end }}

{{/* The operator's configuration (docs/kubernetes.md, "Operator configuration"). */}}
{{- define "llmi.operator.env" -}}
- name: LLMI_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: LLMI_MODELS_DIR
  value: /models
- name: LLMI_MODELS_PVC
  value: {{ include "llmi.models.claimName" . | quote }}
- name: LLMI_RUNTIME_IMAGE
  value: {{ include "llmi.image" (dict "ctx" . "image" .Values.images.runtime) | quote }}
- name: LLMI_VLLM_IMAGE
  value: {{ ternary (include "llmi.image" (dict "ctx" . "image" .Values.images.vllm)) "" .Values.images.vllm.enabled | quote }}
- name: LLMI_NODE_BUDGET_GB
  value: {{ .Values.budget.nodeGB | toString | quote }}
- name: LLMI_GPU_MODE
  value: {{ .Values.gpu.mode | quote }}
- name: LLMI_DISCOVERY_INTERVAL_S
  value: {{ .Values.discovery.intervalSeconds | toString | quote }}
- name: LLM_GPU_MEMORY_UTILIZATION
  value: {{ .Values.budget.gpuMemoryUtilization | toString | quote }}
- name: LLM_ENABLE_GPU_MEMORY_OFFLOAD
  value: {{ .Values.budget.offload.enabled | toString | quote }}
- name: LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB
  value: {{ .Values.budget.offload.thresholdGB | toString | quote }}
- name: LLM_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- end }}

{{/* API keys -------------------------------------------------------------------------------- */}}

{{/* The Secret holding the router's API key file: existingSecret.name, the chart's own when apiKeys
are set, else "" (keys off). */}}
{{- define "llmi.auth.secretName" -}}
{{- if and .Values.auth.apiKeys .Values.auth.existingSecret.name }}
{{- fail "auth: set apiKeys or existingSecret.name, not both" }}
{{- else if .Values.auth.existingSecret.name }}
{{- .Values.auth.existingSecret.name }}
{{- else if .Values.auth.apiKeys }}
{{- printf "%s-api-keys" (include "llmi.router.fullname" .) }}
{{- end }}
{{- end }}

{{/* The key within that Secret that holds the key file. */}}
{{- define "llmi.auth.secretKey" -}}
{{- ternary .Values.auth.existingSecret.key "api-keys" (ne .Values.auth.existingSecret.name "") }}
{{- end }}

{{/* The key file's body in the chart's own Secret: one key per line. */}}
{{- define "llmi.auth.keyFile" -}}
{{- join "\n" .Values.auth.apiKeys }}
{{- end }}
