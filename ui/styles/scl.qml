<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis minScale="1e+08" version="3.22.16-Białowieża" hasScaleBasedVisibilityFlag="0" styleCategories="AllStyleCategories" maxScale="0">
  <flags>
    <Identifiable>1</Identifiable>
    <Removable>1</Removable>
    <Searchable>1</Searchable>
    <Private>0</Private>
  </flags>
  <temporal enabled="0" mode="0" fetchMode="0">
    <fixedRange>
      <start></start>
      <end></end>
    </fixedRange>
  </temporal>
  <customproperties>
    <Option type="Map">
      <Option type="QString" value="Value" name="identify/format"/>
    </Option>
  </customproperties>
  <pipe-data-defined-properties>
    <Option type="Map">
      <Option type="QString" value="" name="name"/>
      <Option name="properties"/>
      <Option type="QString" value="collection" name="type"/>
    </Option>
  </pipe-data-defined-properties>
  <pipe>
    <provider>
      <resampling maxOversampling="2" enabled="false" zoomedOutResamplingMethod="nearestNeighbour" zoomedInResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer type="paletted" alphaBand="-1" nodataColor="" opacity="1" band="1">
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
        <paletteEntry alpha="255" color="#ff0000" value="1" label="Saturated or defective"/>
        <paletteEntry alpha="255" color="#2f2f2f" value="2" label="Dark area pixels"/>
        <paletteEntry alpha="255" color="#643200" value="3" label="Cloud shadows"/>
        <paletteEntry alpha="255" color="#00a000" value="4" label="Vegetation"/>
        <paletteEntry alpha="255" color="#ffe65a" value="5" label="Not vegetated"/>
        <paletteEntry alpha="255" color="#0000ff" value="6" label="Water"/>
        <paletteEntry alpha="255" color="#808080" value="7" label="Unclassified"/>
        <paletteEntry alpha="255" color="#c0c0c0" value="8" label="Cloud medium probability"/>
        <paletteEntry alpha="255" color="#ffffff" value="9" label="Cloud high probability"/>
        <paletteEntry alpha="255" color="#64c8ff" value="10" label="Thin cirrus"/>
        <paletteEntry alpha="255" color="#ff96ff" value="11" label="Snow or ice"/>
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast contrast="0" brightness="0" gamma="1"/>
    <huesaturation grayscaleMode="0" colorizeRed="255" colorizeBlue="128" colorizeGreen="128" colorizeStrength="100" saturation="0" invertColors="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
